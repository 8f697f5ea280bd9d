use super::*;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn aws_response() -> Map<String, Value> {
    obj(serde_json::json!({
        "access_token": "FwoGZXIvYXdzE",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "N_A",
        "expires_in": 3600,
        "credentials": {
            "access_key_id": "ASIAEXAMPLE",
            "secret_access_key": "se'cret",
            "session_token": "FwoGZXIvYXdzE",
            "expiration": "2026-11-24T07:00:00Z"
        }
    }))
}

#[test]
fn the_endpoint_keeps_a_path_prefix_and_plain_http_is_only_for_loopback() {
    let e = |u: &str| token_endpoint(u).map(|u| u.to_string());
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
fn aws_credentials_render_as_credential_process_and_env() {
    let r = aws_response();
    let cp: Value = serde_json::from_str(&credential_process(&r).unwrap()).unwrap();
    assert_eq!(
        cp,
        serde_json::json!({
            "Version": 1,
            "AccessKeyId": "ASIAEXAMPLE",
            "SecretAccessKey": "se'cret",
            "SessionToken": "FwoGZXIvYXdzE",
            "Expiration": "2026-11-24T07:00:00Z"
        })
    );
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_500_000);
    let env = env_lines(&r, now);
    assert!(
        env.contains("export AWS_ACCESS_KEY_ID='ASIAEXAMPLE'\n"),
        "{env}"
    );
    // A quote inside a value is closed, escaped and reopened.
    assert!(
        env.contains(r"export AWS_SECRET_ACCESS_KEY='se'\''cret'"),
        "{env}"
    );
    assert!(
        env.contains("export FERRY_EXPIRES_AT='2026-11-24T07:00:00Z'\n"),
        "{env}"
    );
    assert!(!env.contains("CLOUDSDK"), "{env}");
}

#[test]
fn gcp_tokens_set_the_gcloud_and_terraform_variables_and_jwts_only_ferrys() {
    let gcp = obj(serde_json::json!({
        "access_token": "ya29.x",
        "expires_in": 600,
        "credentials": {"access_token": "ya29.x", "expire_time": "2026-11-24T07:00:00Z", "token_type": "Bearer"}
    }));
    let env = env_lines(&gcp, SystemTime::UNIX_EPOCH);
    assert!(env.contains("export CLOUDSDK_AUTH_ACCESS_TOKEN='ya29.x'\n"));
    assert!(env.contains("export GOOGLE_OAUTH_ACCESS_TOKEN='ya29.x'\n"));
    let jwt = obj(serde_json::json!({
        "access_token": "eyJ.x.y",
        "expires_in": 300,
        "credentials": {"access_token": "eyJ.x.y"}
    }));
    let env = env_lines(&jwt, SystemTime::UNIX_EPOCH);
    assert_eq!(
        env,
        "export FERRY_ACCESS_TOKEN='eyJ.x.y'\nexport FERRY_EXPIRES_AT='1970-01-01T00:05:00Z'\n"
    );
    let err = credential_process(&jwt).unwrap_err().to_string();
    assert!(err.contains("needs an AWS target"), "{err}");
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
    std::fs::write(&p, "x".repeat(ferry::verify::MAX_TOKEN_BYTES + 1)).unwrap();
    assert!(read_token(&p).unwrap_err().to_string().contains("over"));
    assert!(read_token(&dir.path().join("missing")).is_err());
}
