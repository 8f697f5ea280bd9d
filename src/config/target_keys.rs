//! Reading the kind-specific keys of a `[[targets]]` table, with problems named by key.

/// `(key, problem)` pairs, later prefixed with the target's entry.
pub type Problems = Vec<(String, String)>;

/// Records every key that is not in `known`.
pub fn unknown_keys(t: &toml::Table, known: &[&str], kind: &str, problems: &mut Problems) {
    for key in t.keys() {
        if !known.contains(&key.as_str()) {
            problems.push((key.clone(), format!("unknown key for kind `{kind}`")));
        }
    }
}

/// A string key, if present.
pub fn string(t: &toml::Table, key: &str, problems: &mut Problems) -> Option<String> {
    match t.get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.push((key.to_owned(), "must be a string".to_owned()));
            None
        }
    }
}

/// `max_concurrency`: 1–256, else `default`.
pub fn concurrency(t: &toml::Table, default: usize, problems: &mut Problems) -> usize {
    match t.get("max_concurrency") {
        None => default,
        Some(toml::Value::Integer(n)) if (1..=256).contains(n) => {
            usize::try_from(*n).unwrap_or(default)
        }
        Some(_) => {
            problems.push((
                "max_concurrency".into(),
                "must be an integer between 1 and 256".into(),
            ));
            default
        }
    }
}

/// Whether `v` is an http(s) URL.
pub fn is_http_url(v: &str) -> bool {
    url::Url::parse(v).is_ok_and(|u| u.scheme() == "https" || u.scheme() == "http")
}

/// `Ok(settings)` when nothing is wrong, else every problem.
pub fn finish<T>(settings: T, problems: Problems) -> Result<T, Problems> {
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(problems)
    }
}
