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
