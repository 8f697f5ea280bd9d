use super::*;

#[test]
fn store_settings_read_at_open_are_told_apart_from_live_ones() {
    let base = StoreConfig::default();
    let mut live = base.clone();
    live.lock_wait = ConfigDuration::secs(3);
    live.on_cache_error = OnCacheError::Bypass;
    assert!(base.opens_the_same_store(&live), "read by each exchange");
    let mut lag = base.clone();
    lag.revocation_max_lag = ConfigDuration::secs(0);
    assert!(!base.opens_the_same_store(&lag));
    let mut url = base.clone();
    url.url = Some("redis://127.0.0.1:6380".into());
    assert!(!base.opens_the_same_store(&url));
}

#[test]
fn only_named_proxies_may_set_the_client_address() {
    let parse = |server: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"http://127.0.0.1:8080\"\n{server}\n"
        );
        Config::parse(Path::new("ferry.toml"), text.into_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let errs = parse("client_address = \"x-forwarded-for\"");
    assert!(
        errs.contains("ferry.toml: server.client_address: needs `trusted_proxies`"),
        "{errs}"
    );
    let errs = parse("trusted_proxies = [\"10.0.0.0/33\", \"10.0.0.1\"]\nclient_address = \"xff\"");
    assert!(
        errs.contains("server.trusted_proxies[0]: `10.0.0.0/33` is not a CIDR"),
        "{errs}"
    );
    assert!(
        !errs.contains("trusted_proxies[1]"),
        "one address is a /32: {errs}"
    );
    assert!(
        errs.contains("server.client_address: `xff` is not one of peer, x-forwarded-for, forwarded, proxy-protocol"),
        "{errs}"
    );
    let errs = parse("trusted_proxies = [\"10.0.0.0/8\"]\nclient_address = \"proxy-protocol\"");
    assert!(!errs.contains("server."), "{errs}");
}
