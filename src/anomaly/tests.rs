use std::net::IpAddr;

use super::*;
use crate::record::Refusal;

fn config() -> AnomaliesConfig {
    AnomaliesConfig {
        learning_period: crate::config::ConfigDuration::secs(0),
        ..AnomaliesConfig::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A granted exchange of `token` by `subject` for `target` from `client`.
fn granted(subject: &str, target: &str, client: &str, token: &str) -> ExchangeRecord {
    let mut r = ExchangeRecord::start("r".into(), ip(client), "rev".into());
    r.issuer = Some("ci".into());
    r.subject = Some(subject.into());
    r.target = Some(target.into());
    r.token_sha256 = Some(crate::sha256_hex(token.as_bytes()));
    r
}

fn refused(mut r: ExchangeRecord, code: &'static str) -> ExchangeRecord {
    r.refusal = Some(Refusal {
        code,
        description: String::new(),
    });
    r
}

fn kinds(found: &[Anomaly]) -> Vec<&'static str> {
    found.iter().map(|a| a.kind.as_str()).collect()
}

#[test]
fn a_token_from_a_second_address_is_raised_once_and_opens_for_its_subject() {
    let d = Detector::new();
    let c = config();
    assert!(
        kinds(&d.observe(&granted("alice", "aws", "127.0.0.1", "t1"), 100, &c, None))
            .iter()
            .all(|k| *k != "token_reuse_across_clients")
    );
    assert!(
        d.observe(&granted("alice", "aws", "127.0.0.1", "t1"), 101, &c, None)
            .is_empty()
    );
    let found = d.observe(&granted("alice", "aws", "127.0.0.2", "t1"), 102, &c, None);
    assert_eq!(kinds(&found), ["token_reuse_across_clients"]);
    assert_eq!(found[0].evidence["first_client"], "127.0.0.1");
    assert_eq!(found[0].evidence["second_client"], "127.0.0.2");
    assert_eq!(
        found[0].evidence["token_fingerprint"],
        crate::fingerprint(b"t1")
    );
    // Once per token.
    assert!(
        d.observe(&granted("alice", "aws", "127.0.0.3", "t1"), 103, &c, None)
            .is_empty()
    );
    assert_eq!(d.open_for("alice", 104, &c), ["token_reuse_across_clients"]);
    assert!(d.open_for("bob", 104, &c).is_empty());
    // Open for `open_for`, or until acknowledged.
    assert!(d.open_for("alice", 102 + 3600, &c).is_empty());
    assert!(d.acknowledge(found[0].id, "oncall", 105));
    assert!(d.open_for("alice", 105, &c).is_empty());
    assert!(!d.acknowledge(999, "oncall", 105));
    let listed = d.recent(105, &c);
    assert_eq!(listed[0].acknowledged.as_ref().unwrap().0, "oncall");
    assert!(!listed[0].open);
    // A token's first address is forgotten after `remember`.
    let later = 102 + 3601;
    assert!(
        d.observe(&granted("alice", "aws", "127.0.0.9", "t1"), later, &c, None)
            .is_empty()
    );
}

#[test]
fn first_use_and_new_network_only_after_the_learning_period() {
    let d = Detector::new();
    let mut c = config();
    c.learning_period = crate::config::ConfigDuration::secs(60);
    assert!(
        d.observe(&granted("svc", "aws", "10.0.0.1", "a"), 1000, &c, None)
            .is_empty()
    );
    // Learning: a new target and a new network say nothing.
    assert!(
        d.observe(&granted("svc", "gcp", "10.9.0.1", "b"), 1010, &c, None)
            .is_empty()
    );
    // After it: a target never obtained…
    let found = d.observe(&granted("svc", "azure", "10.0.0.7", "c"), 1061, &c, None);
    assert_eq!(kinds(&found), ["first_use"]);
    assert_eq!(found[0].evidence["target"], "azure");
    // …and an address outside the /24s it used.
    let found = d.observe(&granted("svc", "aws", "192.0.2.1", "d"), 1062, &c, None);
    assert_eq!(kinds(&found), ["new_network"]);
    assert_eq!(found[0].evidence["network"], "192.0.2.0/24");
    assert_eq!(
        found[0].evidence["known_networks"],
        "10.0.0.0/24 10.9.0.0/24"
    );
    assert!(
        d.observe(&granted("svc", "aws", "192.0.2.200", "e"), 1063, &c, None)
            .is_empty()
    );
    // IPv6 networks are /56.
    d.observe(
        &granted("v6", "aws", "2001:db8:0:1::1", "f"),
        1064,
        &c,
        None,
    );
    assert!(
        d.observe(
            &granted("v6", "aws", "2001:db8:0:ff::1", "g"),
            1065,
            &c,
            None
        )
        .is_empty()
    );
    let found = d.observe(
        &granted("v6", "aws", "2001:db8:0:100::1", "h"),
        1066,
        &c,
        None,
    );
    assert_eq!(kinds(&found), ["new_network"]);
    assert_eq!(found[0].evidence["network"], "2001:db8:0:100::/56");
    // A refused request obtains nothing: no first use.
    let r = refused(granted("svc", "jwt", "10.0.0.1", "i"), "invalid_target");
    assert!(d.observe(&r, 1067, &c, None).is_empty());
}

#[test]
fn a_burst_is_measured_against_the_subjects_own_average() {
    let d = Detector::new();
    let c = config();
    // 5 exchanges a minute for 10 minutes: the average.
    for minute in 0..10 {
        for i in 0..5 {
            let t = format!("{minute}-{i}");
            let found = d.observe(
                &granted("job", "aws", "10.0.0.1", &t),
                minute * 60 + i,
                &c,
                None,
            );
            assert!(found.is_empty(), "{minute} {i}: {found:?}");
        }
    }
    // 51 in the next minute: above 10 × 5 and above the minimum, raised once.
    let mut raised = Vec::new();
    for i in 0..60 {
        raised.extend(d.observe(
            &granted("job", "aws", "10.0.0.1", &format!("b{i}")),
            600 + i,
            &c,
            None,
        ));
    }
    assert_eq!(kinds(&raised), ["subject_burst"], "{raised:?}");
    assert_eq!(raised[0].evidence["count"], "51");
    // A new subject has no average yet: its first window raises nothing.
    for i in 0..100 {
        assert!(
            d.observe(
                &granted("new", "aws", "10.0.0.1", &format!("n{i}")),
                700,
                &c,
                None
            )
            .is_empty()
        );
    }
}

#[test]
fn denials_are_counted_per_subject_issuer_and_client_but_not_outages() {
    let d = Detector::new();
    let mut c = config();
    c.denial_burst.threshold = 3;
    let deny = |client: &str, code| refused(granted("mallory", "aws", client, client), code);
    for _ in 0..5 {
        assert!(
            d.observe(&deny("127.0.0.1", "temporarily_unavailable"), 10, &c, None)
                .is_empty()
        );
    }
    assert!(
        d.observe(&deny("127.0.0.1", "invalid_target"), 11, &c, None)
            .is_empty()
    );
    assert!(
        d.observe(&deny("127.0.0.2", "invalid_target"), 11, &c, None)
            .is_empty()
    );
    let found = d.observe(&deny("127.0.0.3", "invalid_request"), 12, &c, None);
    // Subject and issuer reached 3; no single client did.
    let dims: Vec<&str> = found
        .iter()
        .map(|a| a.evidence["dimension"].as_str())
        .collect();
    assert_eq!(dims, ["subject", "issuer"]);
    assert_eq!(found[0].subject.as_deref(), Some("mallory"));
    assert_eq!(found[1].subject, None);
    // The window closes: counting starts again.
    assert!(
        d.observe(&deny("127.0.0.1", "invalid_target"), 80, &c, None)
            .is_empty()
    );
}

#[test]
fn unknown_key_ids_are_counted_per_issuer() {
    let d = Detector::new();
    let mut c = config();
    c.unknown_kid_burst.threshold = 2;
    let mut r = ExchangeRecord::start("r".into(), ip("127.0.0.1"), "rev".into());
    r.issuer = Some("ci".into());
    r.unknown_kid = true;
    let r = refused(r, "invalid_request");
    c.denial_burst.enabled = false;
    assert!(d.observe(&r, 1, &c, None).is_empty());
    let found = d.observe(&r, 2, &c, None);
    assert_eq!(kinds(&found), ["unknown_kid_burst"]);
    assert_eq!(found[0].issuer.as_deref(), Some("ci"));
}

#[test]
fn a_full_table_tracks_nothing_new_and_forgets_nothing() {
    let d = Detector::new();
    let mut c = config();
    c.max_tracked = 2;
    d.observe(&granted("a", "aws", "10.0.0.1", "ta"), 1, &c, None);
    d.observe(&granted("b", "aws", "10.0.0.1", "tb"), 1, &c, None);
    d.observe(&granted("c", "aws", "10.0.0.1", "tc"), 1, &c, None);
    assert_eq!(d.untracked().get("subjects"), Some(&1));
    assert_eq!(d.untracked().get("tokens"), Some(&1));
    // `a` is still known: its token from elsewhere is raised.
    let found = d.observe(&granted("a", "aws", "10.0.0.2", "ta"), 2, &c, None);
    assert_eq!(kinds(&found), ["token_reuse_across_clients"]);
}

#[test]
fn off_means_nothing_tracked_and_nothing_open() {
    let d = Detector::new();
    let mut c = config();
    c.enabled = false;
    d.observe(&granted("a", "aws", "10.0.0.1", "t"), 1, &c, None);
    assert!(
        d.observe(&granted("a", "aws", "10.0.0.2", "t"), 2, &c, None)
            .is_empty()
    );
    assert!(d.recent(3, &c).is_empty());
    assert!(d.open_for("a", 3, &c).is_empty());
}
