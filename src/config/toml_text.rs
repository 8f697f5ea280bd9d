//! TOML text to a typed value, with every problem reported as `file: entry: problem`.

use super::ConfigErrors;

/// `text` (from `file`) deserialised as `T`: a syntax error is one problem at its line;
/// unknown keys are collected (all of them, not the first — serde would stop at one)
/// with the line of the first `name =` as a hint. `None` when the text does not parse.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    errs: &mut ConfigErrors,
) -> Option<T> {
    let mut unknown = Vec::new();
    let parsed = toml::de::Deserializer::parse(text)
        .and_then(|de| serde_ignored::deserialize(de, |path| unknown.push(path.to_string())));
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            let entry = e
                .span()
                .map(|span| {
                    let line = text
                        .get(..span.start)
                        .map(|before| before.matches('\n').count() + 1)
                        .unwrap_or(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "toml".into());
            errs.push(file, entry, e.message().trim().to_owned());
            return None;
        }
    };
    for key in unknown {
        let name = key.rsplit('.').next().unwrap_or(&key);
        let line = text.lines().position(|l| {
            l.trim_start()
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        let problem = match line {
            Some(i) => format!("unknown key (line {})", i + 1),
            None => "unknown key".to_owned(),
        };
        errs.push(file, key, problem);
    }
    Some(value)
}
