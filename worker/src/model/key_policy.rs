//! Which API-key variables a worker may read, and where each may be sent. A distributed worker
//! runs jobs that anyone with write access to Redis can register, and a job names both the
//! variable (`api_key_env`) and the server (`url`): without a binding, such a job could make
//! the worker send any secret in its environment to a server of the job author's choosing. So a
//! worker reads a variable only when the operator allowed it (`--allow-key VAR=HOST,…`), and
//! only for a model whose every URL has a host bound to that variable; anything else fails the
//! job before the variable is read or a request is sent. An embedded run (`cai run` without a
//! broker) reads keys freely: the person running it wrote the job.

use std::collections::{BTreeMap, BTreeSet};

use cai_common::job::ModelSpec;

use super::ModelError;

/// Where a worker may send the API keys of its environment: only these variables, each to the
/// hosts bound to it (lowercase, as a URL's host is written: a name, an IPv4 address, or an IPv6
/// address in brackets). Embedded runs build their models without one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    bound: BTreeMap<String, BTreeSet<String>>,
}

impl KeyPolicy {
    /// The policy of `--allow-key` values (`VAR=HOST[,HOST…]`, each flag one variable) and the
    /// `CAI_ALLOW_KEYS` value (`VAR=HOST,HOST;VAR2=HOST`), merged; with neither, no variable may
    /// be read.
    pub fn bound(flags: &[String], env: Option<&str>) -> Result<Self, String> {
        let mut bound: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let from_env = env
            .into_iter()
            .flat_map(|value| value.split(';'))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        for entry in flags.iter().map(String::as_str).chain(from_env) {
            let (var, hosts) = entry
                .split_once('=')
                .ok_or_else(|| format!("--allow-key {entry:?}: expected VAR=HOST[,HOST...]"))?;
            let var = var.trim();
            if var.is_empty() {
                return Err(format!("--allow-key {entry:?}: the variable name is empty"));
            }
            let hosts: BTreeSet<String> = hosts
                .split(',')
                .map(|host| host.trim().to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect();
            if hosts.is_empty() {
                return Err(format!(
                    "--allow-key {entry:?}: name at least one host for {var}"
                ));
            }
            if let Some(host) = hosts
                .iter()
                .find(|host| host.contains(['/', ':']) && !host.starts_with('['))
            {
                return Err(format!(
                    "--allow-key {entry:?}: {host:?} is not a host name (give the host alone, without a scheme, port or path)"
                ));
            }
            bound.entry(var.to_owned()).or_default().extend(hosts);
        }
        Ok(Self { bound })
    }

    /// Checks every model of a job before any of them is built: an `openai` or `anthropic`
    /// model's `api_key_env` must be allowed, and every host of its URLs bound to it. The error is
    /// job-fatal and names the model, the variable and the host, never the value (which is
    /// not read).
    pub fn check(&self, specs: &BTreeMap<String, ModelSpec>) -> Result<(), ModelError> {
        let bound = &self.bound;
        for (name, spec) in specs {
            let Some(var) = spec.api_key_env() else {
                continue;
            };
            let fatal = |why: String| ModelError::JobFatal(format!("model {name}: {why}"));
            let Some(hosts) = bound.get(var) else {
                return Err(fatal(format!(
                    "this worker may not read the API key variable {var} (not in its --allow-key \
                     / CAI_ALLOW_KEYS list); the operator binds a variable to the hosts it may be \
                     sent to with --allow-key {var}=HOST"
                )));
            };
            for url in spec.urls() {
                let host = host_of(url).ok_or_else(|| fatal(format!("{url:?} has no host")))?;
                if !hosts.contains(&host) {
                    return Err(fatal(format!(
                        "this worker may send {var} only to {}, not to {host}; the operator adds \
                         a host with --allow-key {var}=HOST",
                        hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The host of `url` as written, lowercase (no port, no credentials).
fn host_of(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    Some(parsed.host_str()?.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(flags: &[&str], env: Option<&str>) -> KeyPolicy {
        let flags: Vec<String> = flags.iter().map(|flag| (*flag).to_owned()).collect();
        KeyPolicy::bound(&flags, env).unwrap()
    }

    fn models(var: Option<&str>, urls: &[&str]) -> BTreeMap<String, ModelSpec> {
        let mut json = serde_json::json!({"backend": "openai", "model": "m", "url": urls});
        if let Some(var) = var {
            json["api_key_env"] = var.into();
        }
        let spec: ModelSpec = serde_json::from_value(json).expect("a model spec");
        BTreeMap::from([("policy".to_owned(), spec)])
    }

    #[test]
    fn flags_and_the_environment_merge_and_bad_entries_are_refused() {
        let merged = policy(
            &["OPENAI_API_KEY=api.openai.com,Proxy.internal"],
            Some("OTHER=[::1]; OPENAI_API_KEY=backup.internal;"),
        );
        let bound = merged.bound;
        assert_eq!(
            bound["OPENAI_API_KEY"],
            BTreeSet::from([
                "api.openai.com".into(),
                "proxy.internal".into(),
                "backup.internal".into()
            ])
        );
        assert_eq!(bound["OTHER"], BTreeSet::from(["[::1]".into()]));
        for bad in [
            "NOEQUALS",
            "=host",
            "VAR=",
            "VAR=https://host",
            "VAR=host:443",
        ] {
            assert!(KeyPolicy::bound(&[bad.into()], None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_goes_only_where_it_is_bound() {
        let allowed = policy(&["KEY=llm.internal,127.0.0.1"], None);
        allowed
            .check(&models(
                Some("KEY"),
                &["https://LLM.internal/v1", "http://127.0.0.1:8000/v1"],
            ))
            .expect("every host is bound");
        allowed
            .check(&models(None, &["https://anywhere.example/v1"]))
            .expect("a model without a key may call any server");

        let elsewhere = allowed
            .check(&models(
                Some("KEY"),
                &["https://llm.internal/v1", "https://evil.example/v1"],
            ))
            .unwrap_err()
            .to_string();
        assert!(
            elsewhere.contains("KEY") && elsewhere.contains("evil.example"),
            "{elsewhere}"
        );

        let unlisted = allowed
            .check(&models(Some("HOME"), &["https://llm.internal/v1"]))
            .unwrap_err()
            .to_string();
        assert!(
            unlisted.contains("HOME") && unlisted.contains("--allow-key"),
            "{unlisted}"
        );
        let home = std::env::var("HOME").unwrap_or_default();
        assert!(
            home.is_empty() || !unlisted.contains(&home),
            "the value is never shown"
        );

        assert!(matches!(
            policy(&[], None).check(&models(Some("KEY"), &["https://llm.internal/v1"])),
            Err(ModelError::JobFatal(_))
        ));
    }

    #[test]
    fn an_anthropic_key_goes_only_to_its_bound_host() {
        let anthropic = |url: Option<&str>| {
            let mut json = serde_json::json!({
                "backend": "anthropic", "model": "claude", "api_key_env": "ANTHROPIC_API_KEY"});
            if let Some(url) = url {
                json["url"] = url.into();
            }
            let spec: ModelSpec = serde_json::from_value(json).expect("a model spec");
            BTreeMap::from([("policy".to_owned(), spec)])
        };
        let allowed = policy(&["ANTHROPIC_API_KEY=api.anthropic.com"], None);
        allowed
            .check(&anthropic(None))
            .expect("the default URL's host is bound");
        let elsewhere = allowed
            .check(&anthropic(Some("https://proxy.example/v1")))
            .unwrap_err()
            .to_string();
        assert!(elsewhere.contains("proxy.example"), "{elsewhere}");
        assert!(policy(&[], None).check(&anthropic(None)).is_err());
    }
}
