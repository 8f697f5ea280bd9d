//! What lints and reports read of a policy: its effect, the targets its scope names,
//! the attributes and string literals it uses — from its JSON syntax tree (Cedar's EST),
//! never from its text.

use std::collections::BTreeSet;

use serde_json::Value;

/// What is read of one policy.
pub struct PolicyFacts {
    pub id: String,
    pub file: String,
    pub permit: bool,
    /// The target ids its scope names (`None`: any target).
    pub targets: Option<Vec<String>>,
    /// Every attribute name the policy reads (`x.name`, `x has name`).
    pub attributes: BTreeSet<String>,
    /// Every string literal in it.
    pub literals: BTreeSet<String>,
    /// Whether it matches `principal.subject` with `like` (a wildcard).
    pub subject_like: bool,
}

impl PolicyFacts {
    /// Reads a policy's JSON syntax tree.
    pub fn of(id: String, file: String, tree: &Value) -> Self {
        let mut facts = Self {
            id,
            file,
            permit: tree.get("effect").and_then(Value::as_str) == Some("permit"),
            targets: scope_targets(tree.get("resource")),
            attributes: BTreeSet::new(),
            literals: BTreeSet::new(),
            subject_like: false,
        };
        if let Some(conditions) = tree.get("conditions") {
            facts.walk(conditions);
        }
        facts
    }

    fn walk(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                for op in [".", "has"] {
                    if let Some(attr) = map
                        .get(op)
                        .and_then(|a| a.get("attr"))
                        .and_then(Value::as_str)
                    {
                        self.attributes.insert(attr.to_owned());
                    }
                }
                if let Some(Value::String(s)) = map.get("Value") {
                    self.literals.insert(s.clone());
                }
                if let Some(like) = map.get("like")
                    && like
                        .get("left")
                        .and_then(|l| l.get("."))
                        .and_then(|a| a.get("attr"))
                        .and_then(Value::as_str)
                        == Some("subject")
                {
                    self.subject_like = true;
                }
                map.values().for_each(|v| self.walk(v));
            }
            Value::Array(items) => items.iter().for_each(|v| self.walk(v)),
            _ => {}
        }
    }
}

/// The target ids a policy's resource scope names, or `None` for any.
fn scope_targets(scope: Option<&Value>) -> Option<Vec<String>> {
    let scope = scope?;
    let id = |e: &Value| e.get("id").and_then(Value::as_str).map(str::to_owned);
    match scope.get("op").and_then(Value::as_str) {
        Some("==" | "in") => {
            if let Some(e) = scope.get("entity") {
                return id(e).map(|i| vec![i]);
            }
            scope
                .get("entities")
                .and_then(Value::as_array)
                .map(|es| es.iter().filter_map(id).collect())
        }
        _ => None,
    }
}
