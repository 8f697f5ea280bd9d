//! When a memo may answer: decided from the compiled expressions, never from their text.
//!
//! - A mapping's identity is remembered under the token's stable claims (all but the
//!   per-token ones) only if every CEL rule of the issuer reads `assertion` through fixed
//!   names of stable claims ([`reads_only_stable_claims`]).
//! - A policy decision is remembered without the time only if no policy reads
//!   `context.timestamp`, and keyed by the source address only if some policy reads
//!   `context.source_ip` ([`cedar_reads_context`], over each policy's AST).

/// Whether a compiled expression reads `assertion` only through fixed claim names, none
/// of them per-token (`assertion.sub`, `assertion["sub"]`, `has(assertion.groups)`). Any
/// other use — a computed index (`assertion["j" + "ti"]`), the whole object handed to a
/// function or a macro (`assertion.exists(…)`), a claim named in `per_token` — makes the
/// identity depend on what the memo key leaves out, so it is not memoised.
pub fn reads_only_stable_claims(e: &cel::common::ast::IdedExpr, per_token: &[&str]) -> bool {
    use cel::common::ast::{EntryExpr, Expr, LiteralValue, operators};
    let is_assertion =
        |e: &cel::common::ast::IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == "assertion");
    let stable = |claim: &str| !per_token.contains(&claim);
    let walk = |e: &cel::common::ast::IdedExpr| reads_only_stable_claims(e, per_token);
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) => true,
        Expr::Ident(name) => name != "assertion",
        Expr::Select(s) if is_assertion(&s.operand) => stable(&s.field),
        Expr::Select(s) => walk(&s.operand),
        Expr::Call(c) => {
            let indexed = (c.func_name == operators::INDEX || c.func_name == operators::OPT_INDEX)
                && c.args.first().is_some_and(is_assertion);
            if indexed {
                return matches!(
                    c.args.get(1).map(|a| &a.expr),
                    Some(Expr::Literal(LiteralValue::String(claim))) if stable(claim.inner())
                ) && c.args.len() == 2;
            }
            c.target.as_deref().is_none_or(walk) && c.args.iter().all(walk)
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .all(walk),
        Expr::List(l) => l.elements.iter().all(walk),
        Expr::Map(m) => m.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => walk(&me.key) && walk(&me.value),
            EntryExpr::StructField(f) => walk(&f.value),
        }),
        Expr::Struct(s) => s.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => walk(&me.key) && walk(&me.value),
            EntryExpr::StructField(f) => walk(&f.value),
        }),
    }
}

/// Whether any policy may read `context.<name>`: an attribute access or `has` test of
/// that name on `context`, or `context` used whole (compared, passed to a function),
/// which may read anything. Walks each policy's JSON syntax tree (Cedar's EST); a policy
/// whose tree cannot be produced counts as reading it.
pub fn cedar_reads_context(policies: &cedar_policy::PolicySet, name: &str) -> bool {
    policies.policies().any(|p| match p.to_json() {
        Ok(tree) => tree_reads_context(&tree, name),
        Err(_) => true,
    })
}

fn tree_reads_context(v: &serde_json::Value, name: &str) -> bool {
    use serde_json::Value;
    let is_context = |v: &Value| v.get("Var").and_then(Value::as_str) == Some("context");
    match v {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(access) = map.get(op)
                    && let Some(left) = access.get("left")
                    && is_context(left)
                {
                    return access.get("attr").and_then(Value::as_str) == Some(name);
                }
            }
            if is_context(v) {
                return true;
            }
            map.values().any(|x| tree_reads_context(x, name))
        }
        Value::Array(items) => items.iter().any(|x| tree_reads_context(x, name)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(text: &str) -> cedar_policy::PolicySet {
        text.parse().unwrap()
    }

    #[test]
    fn context_reads_are_found_in_the_syntax_tree() {
        let reads = |text: &str, name: &str| cedar_reads_context(&policies(text), name);
        let p = "permit(principal, action, resource) when { context.timestamp < 100 };";
        assert!(reads(p, "timestamp"));
        assert!(!reads(p, "source_ip"));
        // Text that only mentions the name does not read it.
        let quoted =
            r#"permit(principal, action, resource) when { principal.name == "timestamp" };"#;
        assert!(!reads(quoted, "timestamp"));
        let has = "permit(principal, action, resource) when { context has source_ip };";
        assert!(reads(has, "source_ip") && !reads(has, "timestamp"));
        let indexed = r#"permit(principal, action, resource) when { context["timestamp"] > 0 };"#;
        assert!(reads(indexed, "timestamp"));
        // `context` used whole may read anything.
        let whole = r#"permit(principal, action, resource) when { context == {"scopes": []} };"#;
        assert!(reads(whole, "timestamp"));
        let nested = "permit(principal, action, resource) unless { context.scopes.contains(\"a\") && context.timestamp > 5 };";
        assert!(reads(nested, "timestamp"));
    }
}
