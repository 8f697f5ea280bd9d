//! CEL mapping rules: verified claims (`assertion`) → canonical [`Identity`].
//!
//! Every expression is compiled once when the config loads; at request time a missing
//! claim or a wrong type is a [`MappingError`] that names the rule, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use serde_json::Value;

use crate::memo::{Digest, SlotCache};
use crate::verify::VerifiedToken;

/// The longest canonical subject, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// The most attributes one mapping may produce.
pub const MAX_ATTRIBUTES: usize = 50;
/// The most groups one mapping may produce.
pub const MAX_GROUPS: usize = 100;
/// The longest group name or attribute value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The canonical identity of a workload, built only from a [`VerifiedToken`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The issuer id it was mapped from.
    pub issuer_id: String,
    /// The canonical subject.
    pub subject: String,
    /// Groups (Cedar parents).
    pub groups: Vec<String>,
    /// Attributes (strings).
    pub attributes: BTreeMap<String, String>,
}

/// A compiled CEL expression with the config key it came from.
pub struct Rule {
    key: String,
    program: Program,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Rule {
    /// Compiles `source`; the error is CEL's parse message.
    pub fn compile(key: impl Into<String>, source: &str) -> Result<Self, String> {
        let program = Program::compile(source).map_err(|e| one_line(&e.to_string()))?;
        Ok(Self {
            key: key.into(),
            program,
        })
    }

    /// The config key (`mapping.subject`, `condition`, …).
    pub fn key(&self) -> &str {
        &self.key
    }

    fn eval(&self, ctx: &Context<'_, '_>) -> Result<CelValue, MappingError> {
        self.program.execute(ctx).map_err(|e| MappingError::Eval {
            key: self.key.clone(),
            reason: describe(&e),
        })
    }
}

/// Why a verified token could not be mapped. Messages are safe for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    /// No mapping for the issuer (a bug: the verifier only knows configured issuers).
    #[error("no mapping for issuer `{0}`")]
    NoMapping(String),
    /// The issuer's `condition` is false.
    #[error("the token does not satisfy the `condition` of issuer `{0}`")]
    ConditionFalse(String),
    /// An expression failed.
    #[error("`{key}` could not be computed: {reason}")]
    Eval {
        /// The rule.
        key: String,
        /// What went wrong, with no claim values in it.
        reason: String,
    },
    /// An expression gave the wrong type.
    #[error("`{key}` must be {want}, got {got}")]
    WrongType {
        /// The rule.
        key: String,
        /// The expected type.
        want: &'static str,
        /// The type it gave.
        got: String,
    },
    /// A bound was exceeded.
    #[error("`{key}` {problem}")]
    Limit {
        /// The rule.
        key: String,
        /// Which bound.
        problem: String,
    },
}

/// One issuer's compiled rules.
#[derive(Debug)]
pub struct IssuerMapping {
    issuer_id: String,
    condition: Option<Rule>,
    subject: Rule,
    groups: Option<Rule>,
    attributes: Vec<(String, Rule)>,
    /// No rule mentions a per-token claim (`jti`, `iat`, `nbf`, `exp`): the identity is a
    /// function of the other claims, and can be remembered across fresh tokens.
    cacheable: bool,
}

/// Claims that differ between two tokens of the same workload.
const PER_TOKEN_CLAIMS: &[&str] = &["jti", "iat", "nbf", "exp"];

impl IssuerMapping {
    /// Assembles compiled rules.
    pub fn new(
        issuer_id: String,
        condition: Option<Rule>,
        subject: Rule,
        groups: Option<Rule>,
        attributes: Vec<(String, Rule)>,
    ) -> Self {
        let cacheable = std::iter::once(&subject)
            .chain(condition.iter())
            .chain(groups.iter())
            .chain(attributes.iter().map(|(_, r)| r))
            .all(|r| {
                crate::memo::rules::reads_only_stable_claims(
                    r.program.expression(),
                    PER_TOKEN_CLAIMS,
                )
            });
        Self {
            issuer_id,
            condition,
            subject,
            groups,
            attributes,
            cacheable,
        }
    }

    /// Attribute names this mapping produces.
    pub fn attribute_names(&self) -> impl Iterator<Item = &str> {
        self.attributes.iter().map(|(name, _)| name.as_str())
    }
}

/// SHA-256 over the issuer and every claim except the per-token ones, streamed (no copy
/// of the claims): the key under which an identity is remembered.
fn stable_claims_digest(issuer_id: &str, claims: &serde_json::Map<String, Value>) -> Digest {
    use sha2::{Digest as _, Sha256};
    struct Hashing<'a>(&'a mut Sha256);
    impl std::io::Write for Hashing<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Sha256::new();
    h.update((issuer_id.len() as u64).to_be_bytes());
    h.update(issuer_id.as_bytes());
    for (k, v) in claims {
        if PER_TOKEN_CLAIMS.contains(&k.as_str()) {
            continue;
        }
        // The name length-prefixed, then the value as JSON (self-delimiting).
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        // Writing into a hasher cannot fail; a value that cannot be serialized would
        // still hash what was written, and JSON values from a parsed token always can.
        let _ = serde_json::to_writer(Hashing(&mut h), v);
    }
    h.finalize().into()
}

/// All issuers' mappings, with one shared CEL environment.
pub struct Mapper {
    env: Arc<Env>,
    by_issuer: HashMap<String, IssuerMapping>,
    /// Identities by (issuer, claims without per-token claims); one per config revision.
    recent: SlotCache<Identity>,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("by_issuer", &self.by_issuer)
            .finish_non_exhaustive()
    }
}

impl Mapper {
    /// A mapper over these issuers' rules.
    pub fn new(mappings: Vec<IssuerMapping>) -> Self {
        Self::with_cache_capacity(mappings, 16_384)
    }

    /// A mapper remembering up to `capacity` identities (0: none; benchmarks).
    pub fn with_cache_capacity(mappings: Vec<IssuerMapping>, capacity: usize) -> Self {
        Self {
            env: Arc::new(Env::stdlib()),
            by_issuer: mappings
                .into_iter()
                .map(|m| (m.issuer_id.clone(), m))
                .collect(),
            recent: SlotCache::new(capacity, std::time::Duration::from_secs(600)),
        }
    }

    /// The mapping of one issuer.
    pub fn for_issuer(&self, issuer_id: &str) -> Option<&IssuerMapping> {
        self.by_issuer.get(issuer_id)
    }

    /// Maps a verified token into an identity.
    #[tracing::instrument(skip_all, fields(issuer = token.issuer_id()))]
    pub fn map(&self, token: &VerifiedToken) -> Result<Identity, MappingError> {
        let mapping = self
            .by_issuer
            .get(token.issuer_id())
            .ok_or_else(|| MappingError::NoMapping(token.issuer_id().to_owned()))?;
        let key = mapping
            .cacheable
            .then(|| stable_claims_digest(&mapping.issuer_id, token.claims()));
        if let Some(identity) = key.as_ref().and_then(|k| self.recent.get(k)) {
            return Ok(identity);
        }
        let identity = self.evaluate(mapping, token)?;
        if let Some(k) = key {
            self.recent.insert(k, identity.clone());
        }
        Ok(identity)
    }

    /// Evaluates a target's expressions (e.g. AWS session tags) over `identity`
    /// (`identity.subject`, `.issuer`, `.groups`, `.attributes.<name>`): strings out.
    pub fn eval_over_identity(
        &self,
        rules: &[(String, Rule)],
        identity: &Identity,
    ) -> Result<BTreeMap<String, String>, MappingError> {
        let mut out = BTreeMap::new();
        if rules.is_empty() {
            return Ok(out);
        }
        let value = serde_json::json!({
            "subject": identity.subject,
            "issuer": identity.issuer_id,
            "groups": identity.groups,
            "attributes": identity.attributes,
        });
        let mut ctx = Context::with_env(Arc::clone(&self.env));
        ctx.add_variable_from_value("identity", json_to_cel(&value));
        for (name, rule) in rules {
            let v = expect_string(rule, rule.eval(&ctx)?)?;
            if v.len() > MAX_VALUE_BYTES {
                return Err(limit(
                    rule,
                    &format!("is longer than {MAX_VALUE_BYTES} bytes"),
                ));
            }
            out.insert(name.clone(), v);
        }
        Ok(out)
    }

    fn evaluate(
        &self,
        mapping: &IssuerMapping,
        token: &VerifiedToken,
    ) -> Result<Identity, MappingError> {
        let mut ctx = Context::with_env(Arc::clone(&self.env));
        ctx.add_variable_from_value("assertion", object_to_cel(token.claims()));

        if let Some(condition) = &mapping.condition {
            match condition.eval(&ctx)? {
                CelValue::Bool(true) => {}
                CelValue::Bool(false) => {
                    return Err(MappingError::ConditionFalse(mapping.issuer_id.clone()));
                }
                other => return Err(wrong_type(condition, "a bool", &other)),
            }
        }

        let subject = expect_string(&mapping.subject, mapping.subject.eval(&ctx)?)?;
        if subject.is_empty() {
            return Err(limit(&mapping.subject, "is empty"));
        }
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(limit(
                &mapping.subject,
                &format!("is longer than {MAX_SUBJECT_BYTES} bytes"),
            ));
        }

        let mut groups = Vec::new();
        if let Some(rule) = &mapping.groups {
            match rule.eval(&ctx)? {
                CelValue::List(items) => {
                    if items.len() > MAX_GROUPS {
                        return Err(limit(rule, &format!("has more than {MAX_GROUPS} groups")));
                    }
                    for item in items.iter() {
                        let g = expect_string(rule, item.clone())?;
                        if g.is_empty() || g.len() > MAX_VALUE_BYTES {
                            return Err(limit(
                                rule,
                                &format!(
                                    "has a group that is empty or longer than {MAX_VALUE_BYTES} bytes"
                                ),
                            ));
                        }
                        if !groups.contains(&g) {
                            groups.push(g);
                        }
                    }
                }
                other => return Err(wrong_type(rule, "a list of strings", &other)),
            }
        }

        if mapping.attributes.len() > MAX_ATTRIBUTES {
            return Err(MappingError::Limit {
                key: "mapping.attributes".into(),
                problem: format!("has more than {MAX_ATTRIBUTES} entries"),
            });
        }
        let mut attributes = BTreeMap::new();
        for (name, rule) in &mapping.attributes {
            let value = match rule.eval(&ctx)? {
                CelValue::String(s) => s.to_string(),
                CelValue::Int(i) => i.to_string(),
                CelValue::UInt(u) => u.to_string(),
                CelValue::Bool(b) => b.to_string(),
                other => return Err(wrong_type(rule, "a string", &other)),
            };
            if value.len() > MAX_VALUE_BYTES {
                return Err(limit(
                    rule,
                    &format!("is longer than {MAX_VALUE_BYTES} bytes"),
                ));
            }
            attributes.insert(name.clone(), value);
        }

        tracing::trace!(subject = %subject, groups = groups.len(), attributes = attributes.len(), "claims mapped");
        Ok(Identity {
            issuer_id: mapping.issuer_id.clone(),
            subject,
            groups,
            attributes,
        })
    }
}

fn expect_string(rule: &Rule, value: CelValue) -> Result<String, MappingError> {
    match value {
        CelValue::String(s) => Ok(s.to_string()),
        other => Err(wrong_type(rule, "a string", &other)),
    }
}

fn wrong_type(rule: &Rule, want: &'static str, got: &CelValue) -> MappingError {
    MappingError::WrongType {
        key: rule.key.clone(),
        want,
        got: type_name(got).to_owned(),
    }
}

fn limit(rule: &Rule, problem: &str) -> MappingError {
    MappingError::Limit {
        key: rule.key.clone(),
        problem: problem.to_owned(),
    }
}

fn type_name(v: &CelValue) -> &'static str {
    match v {
        CelValue::List(_) => "a list",
        CelValue::Map(_) => "a map",
        CelValue::Function(..) => "a function",
        CelValue::Int(_) => "an int",
        CelValue::UInt(_) => "a uint",
        CelValue::Float(_) => "a double",
        CelValue::String(_) => "a string",
        CelValue::Bytes(_) => "bytes",
        CelValue::Bool(_) => "a bool",
        CelValue::Null => "null",
        _ => "another type",
    }
}

/// Describes a CEL failure without echoing claim values (they may be sensitive).
fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("claim or key `{k}` is missing"),
        ExecutionError::UndeclaredReference(r) => format!("unknown name `{r}`"),
        ExecutionError::UnexpectedType { got, want } => {
            format!("wrong type (got {got}, want {want})")
        }
        ExecutionError::ValuesNotComparable(a, b) => {
            format!("{} cannot be compared to {}", type_name(a), type_name(b))
        }
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => {
            format!(
                "operator `{op}` does not apply to {} and {}",
                type_name(a),
                type_name(b)
            )
        }
        ExecutionError::UnsupportedIndex(..) => "a value cannot be indexed that way".into(),
        ExecutionError::FunctionError { function, .. } => format!("function `{function}` failed"),
        ExecutionError::NoSuchOverload(_) => "a function was called with the wrong types".into(),
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => {
            "division by zero".into()
        }
        _ => "the expression could not be evaluated".into(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Converts verified JSON claims into CEL values (objects → maps, arrays → lists).
pub fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => object_to_cel(map),
    }
}

/// Converts a JSON object (the claims) into a CEL map without copying it as JSON first.
pub fn object_to_cel(map: &serde_json::Map<String, Value>) -> CelValue {
    let converted: HashMap<String, CelValue> = map
        .iter()
        .map(|(k, v)| (k.clone(), json_to_cel(v)))
        .collect();
    CelValue::from(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: &str, src: &str) -> Rule {
        match Rule::compile(key, src) {
            Ok(r) => r,
            Err(e) => unreachable!("test rule `{src}` must compile: {e}"),
        }
    }

    fn eval(src: &str, claims: Value) -> Result<CelValue, MappingError> {
        let env = Arc::new(Env::stdlib());
        let mut ctx = Context::with_env(env);
        ctx.add_variable_from_value("assertion", json_to_cel(&claims));
        rule("k", src).eval(&ctx)
    }

    #[test]
    fn nested_claims_are_reachable() -> Result<(), MappingError> {
        let claims = serde_json::json!({"k8s": {"ns": "prod", "sa": ["a", "b"]}, "n": 3});
        assert_eq!(
            eval(
                "assertion.k8s.ns + '/' + assertion.k8s.sa[1]",
                claims.clone()
            )?,
            CelValue::String(Arc::new("prod/b".into()))
        );
        assert_eq!(eval("assertion.n * 2", claims)?, CelValue::Int(6));
        Ok(())
    }

    #[test]
    fn missing_claim_is_a_named_error() {
        let e = eval("assertion.nope", serde_json::json!({}));
        assert!(
            matches!(e, Err(MappingError::Eval { ref reason, .. }) if reason.contains("`nope`")),
            "{e:?}"
        );
    }

    #[test]
    fn errors_do_not_echo_values() {
        let e = eval(
            "assertion.secret + 1",
            serde_json::json!({"secret": "s3cr3t"}),
        );
        let shown = format!("{e:?}");
        assert!(e.is_err());
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile() {
        assert!(Rule::compile("k", "assertion.a +").is_err());
        assert!(Rule::compile("k", "assertion.a == 'x'").is_ok());
    }

    #[test]
    fn memoisation_is_decided_from_the_compiled_expression() {
        let stable = |src: &str| {
            crate::memo::rules::reads_only_stable_claims(
                rule("k", src).program.expression(),
                PER_TOKEN_CLAIMS,
            )
        };
        for ok in [
            r#""gh:" + assertion.repository + ":" + assertion.ref"#,
            r#"assertion["sub"]"#,
            "has(assertion.groups) ? assertion.groups : []",
            r#"assertion.org == "acme" && assertion.k8s.ns.startsWith("p")"#,
            r#"[assertion.a, {"k": assertion.b}]"#,
            "assertion.groups.map(g, g + assertion.org)",
        ] {
            assert!(stable(ok), "{ok}");
        }
        for per_token in [
            "string(assertion.jti)",
            r#"assertion["j" + "ti"]"#,
            r#"assertion[assertion.which]"#,
            r#"assertion["exp"] > 0"#,
            "has(assertion.nbf)",
            "string(assertion.iat)",
            "assertion.exists(k, k == 'sub')",
            "string(assertion)",
            "size(assertion) > 2",
            r#"[assertion][0].jti"#,
        ] {
            assert!(!stable(per_token), "{per_token}");
        }
    }
}
