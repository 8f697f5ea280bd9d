use super::*;

#[test]
fn token_is_trimmed_and_bounded() {
    assert!(UnverifiedToken::new("  a.b.c\n").is_ok());
    assert!(matches!(
        UnverifiedToken::new(&"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(VerifyError::TooLarge)
    ));
    assert!(matches!(
        UnverifiedToken::new(" \n"),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn jws_shape_is_checked() {
    assert!(split_jws("a.b.c").is_ok());
    assert!(
        matches!(split_jws("a.b."), Err(VerifyError::Malformed(m)) if m.contains("not signed"))
    );
    assert!(matches!(split_jws("a.b.c.d.e"), Err(VerifyError::Malformed(m)) if m.contains("JWE")));
    assert!(split_jws("a.b").is_err());
}

#[test]
fn debug_of_unverified_token_is_a_fingerprint() -> Result<(), VerifyError> {
    let t = UnverifiedToken::new("header.payload.signature")?;
    let shown = format!("{t:?}");
    assert!(!shown.contains("payload"));
    assert_eq!(shown, format!("UnverifiedToken({})", t.fingerprint()));
    Ok(())
}

#[test]
fn numeric_dates_accept_fractions() -> Result<(), VerifyError> {
    let mut m = Map::new();
    m.insert("exp".into(), serde_json::json!(10.7));
    assert_eq!(numeric_date(&m, "exp")?, Some(10));
    m.insert("exp".into(), serde_json::json!("10"));
    assert!(numeric_date(&m, "exp").is_err());
    Ok(())
}
