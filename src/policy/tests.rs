use super::*;

fn attrs() -> BTreeMap<String, AttributePresence> {
    BTreeMap::from([
        ("repository".to_owned(), AttributePresence::Always),
        ("namespace".to_owned(), AttributePresence::Sometimes),
    ])
}

fn engine(text: &str) -> Result<PolicyEngine, ConfigErrors> {
    PolicyEngine::load(
        &[PolicySource {
            file: "p.cedar".into(),
            text: text.into(),
        }],
        &attrs(),
        "ferry.toml",
    )
    .map(|(e, _)| e)
}

fn identity(repo: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer_id: "github".into(),
        subject: format!("github:{repo}"),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        attributes: BTreeMap::from([("repository".to_owned(), repo.to_owned())]),
    }
}

fn input<'a>(identity: &'a Identity, scopes: &'a [String]) -> AuthzInput<'a> {
    AuthzInput {
        anomalies: &[],
        identity,
        target_id: "api",
        target_kind: "jwt",
        source_ip: IpAddr::from([127, 0, 0, 1]),
        scopes,
        timestamp: 1_700_000_000,
        client_certificate: None,
    }
}

#[test]
fn permit_with_group_and_attribute() -> Result<(), ConfigErrors> {
    let e = engine(
        r#"@id("deployers")
        permit(principal in Ferry::Group::"deploy", action == Ferry::Action::"exchange",
               resource == Ferry::Target::"api")
        when { principal.attributes.repository == "acme/infra" };"#,
    )?;
    let ok = identity("acme/infra", &["deploy"]);
    let d = e.authorize(&input(&ok, &[]));
    assert!(d.allowed);
    assert_eq!(d.policy_ids, vec!["deployers".to_owned()]);
    let wrong_repo = identity("acme/web", &["deploy"]);
    assert!(!e.authorize(&input(&wrong_repo, &[])).allowed);
    let no_group = identity("acme/infra", &[]);
    let d = e.authorize(&input(&no_group, &[]));
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    Ok(())
}

#[test]
fn forbid_wins_and_is_named() -> Result<(), ConfigErrors> {
    let e = engine(
        r#"permit(principal, action, resource) when { principal.issuer == "github" };
           forbid(principal, action, resource) when { context.scopes.contains("admin") };"#,
    )?;
    let who = identity("acme/infra", &[]);
    let admin = vec!["admin".to_owned()];
    let d = e.authorize(&input(&who, &admin));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["p.cedar#1".to_owned()]);
    assert!(e.authorize(&input(&who, &[])).allowed);
    Ok(())
}

#[test]
fn an_attribute_no_mapping_produces_is_a_config_error() {
    let e = engine(
        r#"permit(principal, action, resource) when { principal.attributes.branch == "main" };"#,
    );
    let Err(errs) = e else {
        unreachable!("validation must fail")
    };
    let shown = errs.to_string();
    assert!(
        shown.starts_with("p.cedar: policy `p.cedar#0`: "),
        "{shown}"
    );
    assert!(shown.contains("branch"), "{shown}");
}

#[test]
fn optional_attributes_need_has() {
    assert!(
        engine(
            r#"permit(principal, action, resource) when { principal.attributes.namespace == "x" };"#
        )
        .is_err()
    );
    assert!(engine(r#"permit(principal, action, resource) when { principal.attributes has namespace && principal.attributes.namespace == "x" };"#).is_ok());
}

#[test]
fn evaluation_errors_deny() -> Result<(), ConfigErrors> {
    // Overflow is a runtime error in Cedar; a permit that errors must not allow, and a
    // forbid that errors must deny.
    let e = engine(
        r#"permit(principal, action, resource);
           forbid(principal, action, resource) when { context.timestamp * 9223372036854775807 > 0 };"#,
    )?;
    let who = identity("acme/infra", &[]);
    let d = e.authorize(&input(&who, &[]));
    assert!(!d.allowed);
    assert!(!d.errors.is_empty());
    Ok(())
}

#[test]
fn cached_decisions_respect_time_and_address() -> Result<(), ConfigErrors> {
    // A policy that reads the time: no decision cache.
    let timed = engine("permit(principal, action, resource) when { context.timestamp < 100 };")?;
    assert!(timed.decisions.is_none());
    let who = identity("acme/infra", &[]);
    let mut at = input(&who, &[]);
    at.timestamp = 50;
    assert!(timed.authorize(&at).allowed);
    at.timestamp = 150;
    assert!(!timed.authorize(&at).allowed);

    // A policy that reads the address: cached, keyed by it.
    let by_ip =
        engine("permit(principal, action, resource) when { context.source_ip.isLoopback() };")?;
    assert!(by_ip.decisions.is_some() && by_ip.uses_source_ip);
    let mut req = input(&who, &[]);
    assert!(by_ip.authorize(&req).allowed);
    assert!(by_ip.authorize(&req).allowed, "from the cache");
    req.source_ip = IpAddr::from([10, 0, 0, 1]);
    assert!(!by_ip.authorize(&req).allowed);
    // Uncached decisions (the policy reads the time) still see each address: the
    // remembered `ip(…)` values are per address.
    let timed_ip = engine(
        "permit(principal, action, resource) when { context.timestamp < 100 && context.source_ip.isLoopback() };",
    )?;
    assert!(timed_ip.decisions.is_none());
    let mut req = input(&who, &[]);
    req.timestamp = 50;
    for (ip, allowed) in [
        ([127, 0, 0, 1], true),
        ([10, 0, 0, 2], false),
        ([127, 0, 0, 1], true),
        ([10, 0, 0, 2], false),
    ] {
        req.source_ip = IpAddr::from(ip);
        assert_eq!(timed_ip.authorize(&req).allowed, allowed, "{ip:?}");
    }
    // Identity changes are part of the key.
    let other = identity("acme/web", &["g"]);
    let plain = engine(
        r#"permit(principal, action, resource) when { principal.attributes.repository == "acme/infra" };"#,
    )?;
    assert!(plain.authorize(&input(&who, &[])).allowed);
    assert!(!plain.authorize(&input(&other, &[])).allowed);
    Ok(())
}

#[test]
fn syntax_errors_name_the_file() {
    let Err(errs) = engine("permit(principal, action, resource") else {
        unreachable!("must fail")
    };
    assert!(errs.to_string().starts_with("p.cedar: syntax: "));
}

#[test]
fn permit_all_is_linted() -> Result<(), ConfigErrors> {
    let (_, warnings) = PolicyEngine::load(
        &[PolicySource {
            file: "p.cedar".into(),
            text: "permit(principal, action, resource);".into(),
        }],
        &attrs(),
        "ferry.toml",
    )?;
    assert_eq!(warnings.len(), 1);
    Ok(())
}

#[test]
fn a_policy_can_require_the_client_certificates_spiffe_id() -> Result<(), ConfigErrors> {
    let e = engine(
        r#"permit(principal, action, resource) when {
  context has client_certificate && context.client_certificate has spiffe_id &&
  context.client_certificate.spiffe_id == "spiffe://acme.org/ns/ci/sa/deployer"
};"#,
    )?;
    assert!(e.decisions.is_some() && e.uses_client_certificate);
    let who = identity("acme/infra", &[]);
    let mut req = input(&who, &[]);
    assert!(!e.authorize(&req).allowed, "no certificate");
    let cert = crate::tls::ClientCertificate {
        sha256: "aa".repeat(32),
        x5t_s256: String::new(),
        subject: "CN=deployer".into(),
        dns_names: Vec::new(),
        uris: vec!["spiffe://acme.org/ns/ci/sa/deployer".into()],
        spiffe_id: Some("spiffe://acme.org/ns/ci/sa/deployer".into()),
    };
    req.client_certificate = Some(&cert);
    assert!(e.authorize(&req).allowed);
    let other = crate::tls::ClientCertificate {
        sha256: "bb".repeat(32),
        spiffe_id: Some("spiffe://acme.org/ns/ci/sa/other".into()),
        ..cert.clone()
    };
    req.client_certificate = Some(&other);
    assert!(!e.authorize(&req).allowed, "another workload's certificate");
    req.client_certificate = Some(&cert);
    assert!(
        e.authorize(&req).allowed,
        "from the cache, keyed by the certificate"
    );
    Ok(())
}
