//! Reading decision lines back (`ferry impact`, `ferry audit report`): streamed, every
//! other line type skipped, a line that is not JSON named by file and number. The chain
//! is not checked here; `ferry audit verify` does that.

use std::io::BufRead as _;
use std::path::Path;

use super::{AuditIdentity, AuditRequest};

/// The parts of a `"type":"decision"` line its readers use.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DecisionLine {
    /// Unix seconds.
    pub time: Option<i64>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub target: Option<String>,
    /// `allow` or `deny`: the outcome.
    pub decision: Option<String>,
    #[serde(default)]
    pub policy_ids: Vec<String>,
    /// What policy decided, when it ran.
    pub policy_decision: Option<String>,
    pub shadow_decision: Option<String>,
    pub identity: Option<AuditIdentity>,
    pub request: Option<AuditRequest>,
}

impl DecisionLine {
    /// True when a credential was handed out.
    pub fn granted(&self) -> bool {
        self.decision.as_deref() == Some("allow")
    }
}

/// Calls `each` with every decision line of `paths`, in order; the error names the file
/// and line that could not be read.
pub fn for_each_decision(
    paths: &[impl AsRef<Path>],
    mut each: impl FnMut(DecisionLine),
) -> Result<(), String> {
    for path in paths {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let at = || format!("{}: line {}", path.display(), n + 1);
            let line = line.map_err(|e| format!("{}: {e}", at()))?;
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| format!("{}: not a JSON audit line: {e}", at()))?;
            if value.get("type").and_then(serde_json::Value::as_str) != Some("decision") {
                continue;
            }
            each(
                serde_json::from_value(value)
                    .map_err(|e| format!("{}: not a decision line Ferry writes: {e}", at()))?,
            );
        }
    }
    Ok(())
}
