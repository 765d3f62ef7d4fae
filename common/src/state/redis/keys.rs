//! The names of cai's Redis keys under one prefix (`cai` unless the URL's `prefix` parameter
//! names another), and the parameter split off the URL before the client sees it.

use crate::sample::SampleKey;

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "cai";

/// The names of the keys, under one prefix.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn job(&self, job: &str, suffix: &str) -> String {
        format!("{}:{job}:{suffix}", self.prefix)
    }

    pub(super) fn steps(&self, job: &str, key: &SampleKey) -> String {
        format!("{}:{job}:steps:{}", self.prefix, key.to_hex())
    }

    pub(super) fn lease(&self, job: &str, key: &SampleKey) -> String {
        format!("{}:{job}:lease:{}", self.prefix, key.to_hex())
    }

    /// Set of active job names.
    pub(super) fn active_jobs(&self) -> String {
        format!("{}:_jobs:active", self.prefix)
    }

    /// Set of the ids of workers that sent a heartbeat (pruned of expired ones when listed).
    pub(super) fn workers(&self) -> String {
        format!("{}:_workers", self.prefix)
    }

    pub(super) fn worker(&self, worker_id: &str) -> String {
        format!("{}:_workers:{worker_id}", self.prefix)
    }
}

/// Splits the `prefix` parameter off a Redis URL: the URL the client is given, and the prefix.
pub(super) fn split_prefix(url: &str) -> Result<(String, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_PREFIX.to_owned()));
    };
    let mut prefix = DEFAULT_PREFIX.to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.strip_prefix("prefix=") {
            Some(value) => {
                let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
                if value.is_empty() || !value.chars().all(allowed) {
                    return Err(format!(
                        "prefix {value:?}: letters, digits, '-', '_' and '.' only"
                    ));
                }
                value.clone_into(&mut prefix);
            }
            None => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, prefix))
}

/// A `SCAN MATCH` pattern matching exactly the keys that start with `prefix`.
pub(super) fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}
