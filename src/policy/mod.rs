//! Cedar authorization. The schema is derived from the config, every policy is
//! validated against it at load, and [`PolicyEngine::authorize`] returns a
//! [`Decision`] (never a `Result`) whose default is deny.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};

mod facts;
pub use facts::PolicyFacts;

use crate::config::{ConfigErrors, Problem};
use crate::mapping::Identity;
use crate::memo::{Digest, SlotCache};

/// How one attribute appears in the derived schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributePresence {
    /// Every issuer's mapping produces it: policies may use it directly.
    Always,
    /// Only some issuers produce it: policies must test `has` first.
    Sometimes,
}

/// A policy file, read.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// Its path, for messages.
    pub file: String,
    pub text: String,
}

/// What authorization decided and why. The default is deny.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// True only when a permit applied, no forbid applied and nothing failed.
    pub allowed: bool,
    /// The policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// Evaluation errors (any error denies).
    pub errors: Vec<String>,
}

/// The facts a decision is made on.
#[derive(Debug, Clone)]
pub struct AuthzInput<'a> {
    /// Who.
    pub identity: &'a Identity,
    /// Which target.
    pub target_id: &'a str,
    pub target_kind: &'a str,
    /// The client's address.
    pub source_ip: IpAddr,
    /// Scopes requested.
    pub scopes: &'a [String],
    /// Request time, Unix seconds.
    pub timestamp: i64,
    /// The verified certificate the client presented over mutual TLS.
    pub client_certificate: Option<&'a crate::tls::ClientCertificate>,
    /// The anomaly kinds open for the subject (`context.anomalies`), sorted.
    pub anomalies: &'a [&'static str],
}

/// Compiled policies and the schema they were validated against.
pub struct PolicyEngine {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
    action: EntityUid,
    identity_type: EntityTypeName,
    group_type: EntityTypeName,
    target_type: EntityTypeName,
    files: BTreeMap<String, String>,
    /// Decisions by their inputs, when no policy reads the request time (then a
    /// decision is a pure function of identity, target, scopes and — if a policy reads
    /// it — the source address). One cache per config revision.
    decisions: Option<SlotCache<Decision>>,
    uses_source_ip: bool,
    uses_client_certificate: bool,
    uses_anomalies: bool,
    /// `ip("…")` values by address: Cedar's `new_ip` parses the extension's name with its
    /// full grammar on every call (≈ 13 µs, the largest single cost of an uncached
    /// decision).
    ip_expressions: SlotCache<RestrictedExpression>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.files.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The Cedar schema Ferry derives from the config's mapping attributes.
pub fn derive_schema(attributes: &BTreeMap<String, AttributePresence>) -> String {
    let mut record = String::new();
    for (name, presence) in attributes {
        let opt = match presence {
            AttributePresence::Always => "",
            AttributePresence::Sometimes => "?",
        };
        record.push_str(&format!("\n      \"{name}\"{opt}: String,"));
    }
    format!(
        r#"namespace Ferry {{
  entity Group;
  entity Identity in [Group] = {{
    "issuer": String,
    "subject": String,
    "attributes": {{{record}
    }},
  }};
  entity Target = {{
    "id": String,
    "kind": String,
  }};
  action "exchange" appliesTo {{
    principal: [Identity],
    resource: [Target],
    context: {{
      "source_ip": ipaddr,
      "scopes": Set<String>,
      "timestamp": Long,
      "anomalies": Set<String>,
      "client_certificate"?: {{
        "sha256": String,
        "subject": String,
        "dns_names": Set<String>,
        "uris": Set<String>,
        "spiffe_id"?: String,
      }},
    }},
  }};
}}
"#
    )
}

impl PolicyEngine {
    /// Parses, renames and validates every policy; returns the engine and lint warnings.
    pub fn load(
        sources: &[PolicySource],
        attributes: &BTreeMap<String, AttributePresence>,
        config_file: &str,
    ) -> Result<(Self, Vec<Problem>), ConfigErrors> {
        let mut errs = ConfigErrors::default();
        let mut warnings = Vec::new();
        let schema_text = derive_schema(attributes);
        let schema = match Schema::from_cedarschema_str(&schema_text) {
            Ok((schema, _)) => schema,
            Err(e) => {
                errs.push(
                    config_file,
                    "policy schema",
                    format!("derived schema is invalid: {e}"),
                );
                return Err(errs);
            }
        };

        let mut policies = PolicySet::new();
        let mut files = BTreeMap::new();
        for source in sources {
            let parsed = match PolicySet::from_str(&source.text) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(&source.file, "syntax", one_line(&e.to_string()));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                errs.push(
                    &source.file,
                    "templates",
                    "policy templates are not supported; write static policies",
                );
            }
            let name = std::path::Path::new(&source.file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| source.file.clone());
            let mut ordered: Vec<&Policy> = parsed.policies().collect();
            // Cedar numbers policies policy0, policy1, … in file order.
            ordered.sort_by_key(|p| policy_index(p.id()));
            for (n, policy) in ordered.into_iter().enumerate() {
                let id = policy
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{name}#{n}"));
                if files.contains_key(&id) {
                    errs.push(
                        &source.file,
                        format!("policy `{id}`"),
                        "id is used by another policy",
                    );
                    continue;
                }
                if let Some(w) = lint(policy) {
                    warnings.push(Problem {
                        file: source.file.clone(),
                        entry: format!("policy `{id}`"),
                        problem: w,
                    });
                }
                if let Err(e) = policies.add(policy.new_id(PolicyId::new(&id))) {
                    errs.push(
                        &source.file,
                        format!("policy `{id}`"),
                        one_line(&e.to_string()),
                    );
                    continue;
                }
                files.insert(id, source.file.clone());
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }

        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for e in validation.validation_errors() {
            let id = e.policy_id().to_string();
            let file = files
                .get(&id)
                .cloned()
                .unwrap_or_else(|| config_file.to_owned());
            let mut problem = one_line(&e.to_string());
            if let Some(help) = miette_help(e) {
                problem.push_str(&format!(" ({help})"));
            }
            errs.push(file, format!("policy `{id}`"), problem);
        }
        if !errs.is_empty() {
            return Err(errs);
        }

        let parse = |s: &str| EntityTypeName::from_str(s).ok();
        let (Some(identity_type), Some(group_type), Some(target_type), Some(action)) = (
            parse("Ferry::Identity"),
            parse("Ferry::Group"),
            parse("Ferry::Target"),
            EntityUid::from_str(r#"Ferry::Action::"exchange""#).ok(),
        ) else {
            errs.push(
                config_file,
                "policy schema",
                "internal: Ferry's entity names do not parse",
            );
            return Err(errs);
        };
        let reads_timestamp = crate::memo::rules::cedar_reads_context(&policies, "timestamp");
        let uses_source_ip = crate::memo::rules::cedar_reads_context(&policies, "source_ip");
        let uses_client_certificate =
            crate::memo::rules::cedar_reads_context(&policies, "client_certificate");
        let uses_anomalies = crate::memo::rules::cedar_reads_context(&policies, "anomalies");
        Ok((
            Self {
                schema,
                policies,
                authorizer: Authorizer::new(),
                decisions: (!reads_timestamp)
                    .then(|| SlotCache::new(16_384, std::time::Duration::from_secs(300))),
                uses_source_ip,
                uses_client_certificate,
                uses_anomalies,
                ip_expressions: SlotCache::new(4096, std::time::Duration::from_secs(3600)),
                action,
                identity_type,
                group_type,
                target_type,
                files,
            },
            warnings,
        ))
    }

    /// What lints and reports read of each policy (from its syntax tree; a policy whose
    /// tree cannot be produced is left out).
    pub fn facts(&self) -> Vec<PolicyFacts> {
        self.policies
            .policies()
            .filter_map(|p| {
                let id = p.id().to_string();
                let file = self.files.get(&id)?.clone();
                Some(PolicyFacts::of(id, file, &p.to_json().ok()?))
            })
            .collect()
    }

    /// Each policy's text by id, with the file it came from.
    pub fn texts(&self) -> BTreeMap<String, (String, String)> {
        self.policies
            .policies()
            .map(|p| {
                let id = p.id().to_string();
                let file = self.files.get(&id).cloned().unwrap_or_default();
                (id, (file, p.to_string()))
            })
            .collect()
    }

    /// Whether a policy reads `context.anomalies` (then the exchange looks them up).
    pub fn reads_anomalies(&self) -> bool {
        self.uses_anomalies
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no policy is loaded (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Decides whether `input.identity` may exchange for the target. Fails closed: any
    /// error while building the request or evaluating a policy is a deny.
    #[tracing::instrument(skip_all, fields(target = input.target_id))]
    pub fn authorize(&self, input: &AuthzInput<'_>) -> Decision {
        let key = self.decisions.as_ref().map(|_| self.decision_key(input));
        if let (Some(cache), Some(key)) = (&self.decisions, &key)
            && let Some(d) = cache.get(key)
        {
            return d;
        }
        let d = self.evaluate(input);
        // Errors are not cached: they deny, and are reported fresh each time.
        if let (Some(cache), Some(key)) = (&self.decisions, key)
            && d.errors.is_empty()
        {
            cache.insert(key, d.clone());
        }
        d
    }

    /// Evaluates the policies for `input`, never consulting or filling the decision cache
    /// (what [`PolicyEngine::authorize`] does on a miss; benchmarks measure it).
    pub fn evaluate(&self, input: &AuthzInput<'_>) -> Decision {
        self.try_authorize(input).unwrap_or_else(|e| Decision {
            allowed: false,
            policy_ids: Vec::new(),
            errors: vec![e],
        })
    }

    /// Everything the decision depends on but the time (a policy that reads the time
    /// is never memoised), each value in an unambiguous encoding.
    fn decision_key(&self, input: &AuthzInput<'_>) -> Digest {
        let id = input.identity;
        let mut d = crate::key_digest::KeyDigest::new("decision");
        d.str(&id.issuer_id)
            .str(&id.subject)
            .set(id.groups.iter().map(String::as_str))
            .map(&id.attributes)
            .str(input.target_id)
            .str(input.target_kind)
            .set(input.scopes.iter().map(String::as_str));
        if self.uses_source_ip {
            d.str(&input.source_ip.to_string());
        }
        if self.uses_anomalies {
            d.set(input.anomalies.iter().copied());
        }
        if self.uses_client_certificate {
            // The certificate's digest stands for everything policy reads of it.
            d.str(input.client_certificate.map_or("", |c| c.sha256.as_str()));
        }
        d.finish()
    }

    fn try_authorize(&self, input: &AuthzInput<'_>) -> Result<Decision, String> {
        let identity = input.identity;
        let principal = EntityUid::from_type_name_and_id(
            self.identity_type.clone(),
            EntityId::new(&identity.subject),
        );
        let resource = EntityUid::from_type_name_and_id(
            self.target_type.clone(),
            EntityId::new(input.target_id),
        );
        let parents: HashSet<EntityUid> = identity
            .groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(self.group_type.clone(), EntityId::new(g)))
            .collect();
        let attributes = RestrictedExpression::new_record(
            identity
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
        )
        .map_err(|e| format!("attributes: {e}"))?;
        let principal_entity = Entity::new(
            principal.clone(),
            HashMap::from([
                (
                    "issuer".to_owned(),
                    RestrictedExpression::new_string(identity.issuer_id.clone()),
                ),
                (
                    "subject".to_owned(),
                    RestrictedExpression::new_string(identity.subject.clone()),
                ),
                ("attributes".to_owned(), attributes),
            ]),
            parents.clone(),
        )
        .map_err(|e| format!("identity entity: {e}"))?;
        let target_entity = Entity::new(
            resource.clone(),
            HashMap::from([
                (
                    "id".to_owned(),
                    RestrictedExpression::new_string(input.target_id.to_owned()),
                ),
                (
                    "kind".to_owned(),
                    RestrictedExpression::new_string(input.target_kind.to_owned()),
                ),
            ]),
            HashSet::new(),
        )
        .map_err(|e| format!("target entity: {e}"))?;
        let groups = parents
            .into_iter()
            .map(|uid| Entity::new_no_attrs(uid, HashSet::new()));
        let entities = Entities::from_entities(
            [principal_entity, target_entity].into_iter().chain(groups),
            Some(&self.schema),
        )
        .map_err(|e| format!("entities: {e}"))?;
        let certificate = input.client_certificate.map(|c| {
            let strings = |v: &[String]| {
                RestrictedExpression::new_set(
                    v.iter()
                        .map(|s| RestrictedExpression::new_string(s.clone())),
                )
            };
            let mut fields = vec![
                (
                    "sha256".to_owned(),
                    RestrictedExpression::new_string(c.sha256.clone()),
                ),
                (
                    "subject".to_owned(),
                    RestrictedExpression::new_string(c.subject.clone()),
                ),
                ("dns_names".to_owned(), strings(&c.dns_names)),
                ("uris".to_owned(), strings(&c.uris)),
            ];
            if let Some(id) = &c.spiffe_id {
                fields.push((
                    "spiffe_id".to_owned(),
                    RestrictedExpression::new_string(id.clone()),
                ));
            }
            RestrictedExpression::new_record(fields)
        });
        let certificate = certificate
            .transpose()
            .map_err(|e| format!("client_certificate: {e}"))?
            .map(|c| ("client_certificate".to_owned(), c));
        let context = Context::from_pairs(
            [
                ("source_ip".to_owned(), self.ip_expression(input.source_ip)),
                (
                    "scopes".to_owned(),
                    RestrictedExpression::new_set(
                        input
                            .scopes
                            .iter()
                            .map(|s| RestrictedExpression::new_string(s.clone())),
                    ),
                ),
                (
                    "timestamp".to_owned(),
                    RestrictedExpression::new_long(input.timestamp),
                ),
                (
                    "anomalies".to_owned(),
                    RestrictedExpression::new_set(
                        input
                            .anomalies
                            .iter()
                            .map(|k| RestrictedExpression::new_string((*k).to_owned())),
                    ),
                ),
            ]
            .into_iter()
            .chain(certificate),
        )
        .map_err(|e| format!("context: {e}"))?;
        let request = Request::new(
            principal,
            self.action.clone(),
            resource,
            context,
            Some(&self.schema),
        )
        .map_err(|e| format!("request: {e}"))?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| one_line(&e.to_string()))
            .collect();
        let policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        // Fail closed: a policy that could not be evaluated (a forbid among them) denies.
        let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
        tracing::trace!(allowed, policies = ?policy_ids, errors = errors.len(), "policy evaluated");
        Ok(Decision {
            allowed,
            policy_ids,
            errors,
        })
    }
}

impl PolicyEngine {
    fn ip_expression(&self, ip: IpAddr) -> RestrictedExpression {
        let text = ip.to_string();
        let key = crate::sha256(text.as_bytes());
        if let Some(e) = self.ip_expressions.get(&key) {
            return e;
        }
        let e = RestrictedExpression::new_ip(text);
        self.ip_expressions.insert(key, e.clone());
        e
    }
}

fn policy_index(id: &PolicyId) -> usize {
    id.to_string()
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Flags a permit that names no principal and has no condition: it admits everyone.
fn lint(policy: &Policy) -> Option<String> {
    let json = policy.to_json().ok()?;
    let permit = json.get("effect").and_then(|e| e.as_str()) == Some("permit");
    let any_principal = json
        .get("principal")
        .and_then(|p| p.get("op"))
        .and_then(|o| o.as_str())
        == Some("All");
    let no_conditions = json
        .get("conditions")
        .and_then(|c| c.as_array())
        .is_none_or(Vec::is_empty);
    (permit && any_principal && no_conditions).then(|| {
        "permits every identity with no condition; constrain the principal or add a `when`"
            .to_owned()
    })
}

fn miette_help(e: &cedar_policy::ValidationError) -> Option<String> {
    use miette::Diagnostic as _;
    e.help().map(|h| one_line(&h.to_string()))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
