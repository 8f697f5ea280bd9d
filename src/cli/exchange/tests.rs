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
fn google_executable_prints_the_pluggable_auth_response_for_jwts_only() {
    let jwt = obj(serde_json::json!({
        "access_token": "eyJ.x.y",
        "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "expires_in": 600,
    }));
    let out = google_executable(&jwt, SystemTime::UNIX_EPOCH + Duration::from_secs(1000)).unwrap();
    assert_eq!(
        out,
        "{\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"id_token\":\"eyJ.x.y\",\"expiration_time\":1600}\n"
    );
    let err = google_executable(&aws_response(), SystemTime::UNIX_EPOCH)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a jwt target"), "{err}");
}
