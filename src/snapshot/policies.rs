//! The Cedar policy set, validated against the schema derived from the mappings.

use std::collections::BTreeMap;

use super::Build;
use crate::config::Config;
use crate::policy::{AttributePresence, PolicyEngine, PolicySource};

/// The enforced policy set and, when `[policy] shadow_files` names any, the shadow set.
pub(super) struct Policies {
    pub(super) enforced: PolicyEngine,
    pub(super) shadow: Option<PolicyEngine>,
}

/// Reads the files `[policy] files` and `shadow_files` match (each joins the revision;
/// the directories their globs read are watched) and loads each set against the same
/// schema: an attribute every issuer maps is always present, one some issuers map
/// sometimes.
pub(super) fn build(
    config: &Config,
    attribute_count: BTreeMap<String, usize>,
    b: &mut Build,
) -> Option<Policies> {
    let issuer_count = config.issuers.len();
    let attributes: BTreeMap<String, AttributePresence> = attribute_count
        .into_iter()
        .map(|(name, n)| {
            let presence = if n == issuer_count {
                AttributePresence::Always
            } else {
                AttributePresence::Sometimes
            };
            (name, presence)
        })
        .collect();
    let enforced = load(config, "policy.files", &config.policy.files, &attributes, b);
    let shadow = if config.policy.shadow_files.is_empty() {
        Some(None)
    } else {
        load(
            config,
            "policy.shadow_files",
            &config.policy.shadow_files,
            &attributes,
            b,
        )
        .map(Some)
    };
    Some(Policies {
        enforced: enforced?,
        shadow: shadow?,
    })
}

/// One set: the files `patterns` match, read and loaded.
fn load(
    config: &Config,
    key: &str,
    patterns: &[String],
    attributes: &BTreeMap<String, AttributePresence>,
    b: &mut Build,
) -> Option<PolicyEngine> {
    let mut sources = Vec::new();
    for pattern in patterns {
        let resolved = config.source.resolve(std::path::Path::new(pattern));
        if let Some(dir) = resolved.parent() {
            // A new file matching the glob changes the directory's mtime.
            b.watched.push(dir.to_path_buf());
        }
        let resolved = resolved.to_string_lossy().into_owned();
        let mut matched = Vec::new();
        match glob::glob(&resolved) {
            Ok(paths) => {
                for path in paths.flatten() {
                    matched.push(path);
                }
            }
            Err(e) => b.errs.push(
                &b.file,
                key,
                format!("`{pattern}` is not a valid pattern: {e}"),
            ),
        }
        matched.sort();
        if matched.is_empty() {
            b.errs
                .push(&b.file, key, format!("`{pattern}` matches no file"));
        }
        for path in matched {
            b.watched.push(path.clone());
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    b.revision_input
                        .extend_from_slice(path.to_string_lossy().as_bytes());
                    b.revision_input.extend_from_slice(text.as_bytes());
                    sources.push(PolicySource {
                        file: path.display().to_string(),
                        text,
                    });
                }
                Err(e) => b.errs.push(
                    path.display().to_string(),
                    "file",
                    format!("cannot read: {e}"),
                ),
            }
        }
    }
    match PolicyEngine::load(&sources, attributes, &b.file) {
        Ok((engine, lints)) => {
            b.warnings.extend(lints.into_iter().map(|mut p| {
                p.problem = format!("warning: {}", p.problem);
                p
            }));
            Some(engine)
        }
        Err(e) => {
            b.errs.0.extend(e.0);
            None
        }
    }
}
