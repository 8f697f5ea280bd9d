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

#[test]
fn anomaly_thresholds_are_checked_and_a_webhook_url_never_echoed() {
    let parse = |anomalies: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"http://127.0.0.1:8080\"\n[anomalies]\n{anomalies}\n"
        );
        Config::parse(Path::new("ferry.toml"), text.into_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(!parse("").contains("anomalies"), "{}", parse(""));
    let errs = parse(
        "webhook_url = \"http://hooks.example.com/T0/SECRETPATH\"\nmax_tracked = 0\n\
         [anomalies.subject_burst]\nfactor = 0.5\nsmoothing = 0\n\
         [anomalies.denial_burst]\nthreshold = 0\n[anomalies.new_network]\nipv4_prefix = 33\n\
         [anomalies.first_use]\nenabeld = false",
    );
    for expected in [
        "ferry.toml: anomalies.webhook_url: must be https (plain http only to a loopback address)",
        "ferry.toml: anomalies.max_tracked: must be at least 1",
        "ferry.toml: anomalies.subject_burst.factor: must be a number above 1",
        "ferry.toml: anomalies.subject_burst.smoothing: must be above 0 and at most 1",
        "ferry.toml: anomalies.denial_burst: `window` (≥ 1s) and `threshold` must be positive",
        "ferry.toml: anomalies.new_network.ipv4_prefix: must be 0 to 32",
        "anomalies.first_use.enabeld",
    ] {
        assert!(errs.contains(expected), "{expected}\n{errs}");
    }
    assert!(!errs.contains("SECRETPATH"), "{errs}");
    let errs = parse("webhook_url = \"not a url\"");
    assert!(
        errs.contains("anomalies.webhook_url: is not a URL"),
        "{errs}"
    );
}

#[test]
fn sentinel_settings_are_checked() {
    let parse = |store: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"http://127.0.0.1:8080\"\n[store]\nbackend = \"redis\"\n{store}\n"
        );
        Config::parse(Path::new("ferry.toml"), text.into_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let errs = parse("sentinel = [\"redis://127.0.0.1:26379\"]");
    assert!(
        errs.contains("ferry.toml: store.sentinel_master: is required with `sentinel`"),
        "{errs}"
    );
    let errs = parse(
        "url = \"redis://a:6379\"\nsentinel = [\"redis://b:26379\"]\nsentinel_master = \"m\"",
    );
    assert!(
        errs.contains("`url`, `cluster` and `sentinel` exclude each other"),
        "{errs}"
    );
    let errs = parse(
        "sentinel = [\"http://b:26379\"]\nsentinel_master = \"m\"\nreplica_ack_timeout = \"0s\"",
    );
    assert!(
        errs.contains("`http://b:26379` is not a redis:// or rediss:// URL"),
        "{errs}"
    );
    assert!(
        errs.contains("store.replica_ack_timeout: must be between 1ms and 10s"),
        "{errs}"
    );
    let ok = parse("sentinel = [\"redis://b:26379\"]\nsentinel_master = \"m\"");
    assert!(
        !ok.contains("store.sentinel") && !ok.contains("exclude"),
        "{ok}"
    );
}
