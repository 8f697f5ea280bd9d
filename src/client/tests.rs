use super::*;

#[test]
fn the_endpoint_keeps_a_path_prefix_and_plain_http_is_only_for_loopback() {
    let e = |u: &str| token_endpoint(u, "--url").map(|u| u.to_string());
    assert_eq!(
        e("https://ferry.example.com").unwrap(),
        "https://ferry.example.com/oauth2/token"
    );
    assert_eq!(
        e("https://gw.example.com/ferry").unwrap(),
        "https://gw.example.com/ferry/oauth2/token"
    );
    assert_eq!(
        e("http://127.0.0.1:8080/").unwrap(),
        "http://127.0.0.1:8080/oauth2/token"
    );
    assert!(e("http://[::1]:8080").is_ok());
    assert!(e("http://localhost:8080").is_ok());
    let err = e("http://ferry.example.com").unwrap_err().to_string();
    assert!(err.contains("in the clear"), "{err}");
    assert!(e("ftp://ferry.example.com").is_err());
    assert!(e("https://ferry.example.com/?x=1").is_err());
    assert!(e("not a url").is_err());
    let err = e("https://ci:hunter2@ferry.example.com")
        .unwrap_err()
        .to_string();
    assert!(err.contains("user name or password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn token_files_are_trimmed_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    std::fs::write(&p, "eyJ.a.b\n").unwrap();
    assert_eq!(read_token(&p).unwrap(), "eyJ.a.b");
    std::fs::write(&p, "\n").unwrap();
    assert!(read_token(&p).unwrap_err().to_string().contains("empty"));
    std::fs::write(&p, "a b").unwrap();
    assert!(
        read_token(&p)
            .unwrap_err()
            .to_string()
            .contains("more than one")
    );
    std::fs::write(&p, "x".repeat(crate::verify::MAX_TOKEN_BYTES + 1)).unwrap();
    assert!(read_token(&p).unwrap_err().to_string().contains("over"));
    assert!(read_token(&dir.path().join("missing")).is_err());
}
