//! A model's table as the job file writes it ([`ModelFile`]: every key of every backend, flat)
//! and its conversions to and from [`ModelSpec`]: the checks of a model's settings, and the
//! refusal of a setting that belongs to another backend.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::super::concurrency::{Concurrency, MaxConcurrency};
use super::{
    ANTHROPIC_URL, AnthropicSpec, Backend, BackendSpec, BatchSpec, CallPolicy, DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_WAIT_S, Endpoint, LocalSpec, MAX_BATCH_SIZE, MockSpec, ModelSpec, OpenaiSpec,
    Sampling,
};

/// A model's table as the job file writes it: every key of every backend, flat. Only
/// [`ModelSpec`]'s conversions see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::job) struct ModelFile {
    backend: Backend,
    #[serde(default)]
    url: Option<Urls>,
    // Both left out when off, so jobs from before the settings serialise as they did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    replicas_from_dns: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns_refresh_s: Option<u64>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default = "default_endpoint")]
    endpoint: Endpoint,
    // Left out when off, so jobs from before the setting keep their fingerprint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    prefill: bool,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default = "default_concurrency")]
    max_concurrency: MaxConcurrency,
    // Left out unless set, so jobs from before the setting keep their JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_concurrency_limit: Option<usize>,
    #[serde(default = "default_temperature")]
    temperature: f32,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default = "default_timeout")]
    timeout_s: u64,
    #[serde(default = "default_top_logprobs")]
    top_logprobs: u32,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default)]
    retry_budget_s: Option<u64>,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    price_in: Option<f64>,
    #[serde(default)]
    price_out: Option<f64>,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    threads: Option<usize>,
    // The batch settings are left out when unset, so jobs from before them keep their JSON.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    batch: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_wait_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_price_in: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_price_out: Option<f64>,
}

/// `url` as a job file writes it: one URL (a string, as before replicas), or a list of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged, expecting = "a URL or a list of URLs")]
enum Urls {
    One(String),
    Many(Vec<String>),
}

/// How often DNS replicas are looked up again when `dns_refresh_s` is left out.
const DEFAULT_DNS_REFRESH_S: u64 = 30;

fn default_endpoint() -> Endpoint {
    Endpoint::Chat
}
fn default_concurrency() -> MaxConcurrency {
    MaxConcurrency::Fixed(16)
}
fn default_temperature() -> f32 {
    1.0
}
fn default_max_tokens() -> u32 {
    512
}
fn default_timeout() -> u64 {
    120
}
fn default_top_logprobs() -> u32 {
    20
}
fn default_max_retries() -> u32 {
    4
}

impl ModelFile {
    /// A model of `backend` with every key at its default.
    pub(super) fn default_for(backend: Backend) -> Self {
        Self {
            backend,
            url: None,
            replicas_from_dns: false,
            dns_refresh_s: None,
            model: None,
            endpoint: default_endpoint(),
            prefill: false,
            api_key_env: None,
            max_concurrency: default_concurrency(),
            max_concurrency_limit: None,
            temperature: default_temperature(),
            max_tokens: default_max_tokens(),
            timeout_s: default_timeout(),
            top_logprobs: default_top_logprobs(),
            max_retries: default_max_retries(),
            retry_budget_s: None,
            rpm: None,
            tpm: None,
            price_in: None,
            price_out: None,
            latency_ms: 0,
            path: None,
            threads: None,
            batch: false,
            batch_size: None,
            batch_wait_s: None,
            batch_price_in: None,
            batch_price_out: None,
        }
    }

    /// The keys set (to other than their default) that belong to backends other than this
    /// model's, with the backends they belong to: a job that sets `url` on a mock means
    /// something the mock would silently ignore.
    fn foreign_keys(&self) -> Vec<(&'static str, &'static [Backend])> {
        const HTTP: &[Backend] = &[Backend::Openai, Backend::Anthropic];
        const OPENAI: &[Backend] = &[Backend::Openai];
        let owned: [(bool, &'static str, &'static [Backend]); 11] = [
            (self.url.is_some(), "url", HTTP),
            (self.replicas_from_dns, "replicas_from_dns", OPENAI),
            (self.dns_refresh_s.is_some(), "dns_refresh_s", OPENAI),
            (self.model.is_some(), "model", HTTP),
            (self.endpoint != Endpoint::Chat, "endpoint", OPENAI),
            (self.prefill, "prefill", OPENAI),
            (self.api_key_env.is_some(), "api_key_env", HTTP),
            (self.path.is_some(), "path", &[Backend::Local]),
            (self.threads.is_some(), "threads", &[Backend::Local]),
            (self.latency_ms != 0, "latency_ms", &[Backend::Mock]),
            (self.batch, "batch", HTTP),
        ];
        owned
            .into_iter()
            .filter(|&(set, _, owners)| set && !owners.contains(&self.backend))
            .map(|(_, key, owners)| (key, owners))
            .collect()
    }

    fn check_policy(&self) -> Result<(), String> {
        if self.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("`temperature` must be between 0 and 2".into());
        }
        if !(1..=20).contains(&self.top_logprobs) {
            return Err("`top_logprobs` must be between 1 and 20".into());
        }
        if self.retry_budget_s == Some(0) {
            return Err("`retry_budget_s` must be at least 1".into());
        }
        if self.rpm == Some(0) {
            return Err("`rpm` must be at least 1 (leave it out for no limit)".into());
        }
        if self.tpm == Some(0) {
            return Err("`tpm` must be at least 1 (leave it out for no limit)".into());
        }
        for (field, price) in [
            ("price_in", self.price_in),
            ("price_out", self.price_out),
            ("batch_price_in", self.batch_price_in),
            ("batch_price_out", self.batch_price_out),
        ] {
            if price.is_some_and(|usd| !(usd.is_finite() && usd >= 0.0)) {
                return Err(format!(
                    "`{field}` must be a non-negative number of USD per million tokens"
                ));
            }
        }
        Ok(())
    }

    /// Writes batch mode's settings, when it is on.
    fn set_batch(&mut self, batch: Option<BatchSpec>) {
        if let Some(batch) = batch {
            self.batch = true;
            self.batch_size = Some(batch.size);
            self.batch_wait_s = Some(batch.wait_s);
            self.batch_price_in = batch.price_in;
            self.batch_price_out = batch.price_out;
        }
    }

    /// The batch settings, when `batch = true`; a batch setting without it is refused.
    fn batch_spec(&self) -> Result<Option<BatchSpec>, String> {
        if !self.batch {
            let set = [
                ("batch_size", self.batch_size.is_some()),
                ("batch_wait_s", self.batch_wait_s.is_some()),
                ("batch_price_in", self.batch_price_in.is_some()),
                ("batch_price_out", self.batch_price_out.is_some()),
            ];
            return match set.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(format!(
                    "`{key}` is a setting of batch mode: set `batch = true` or remove it"
                )),
                None => Ok(None),
            };
        }
        let size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&size) {
            return Err(format!(
                "`batch_size` must be between 1 and {MAX_BATCH_SIZE}"
            ));
        }
        Ok(Some(BatchSpec {
            size,
            wait_s: self.batch_wait_s.unwrap_or(DEFAULT_BATCH_WAIT_S),
            price_in: self.batch_price_in,
            price_out: self.batch_price_out,
        }))
    }

    fn backend_spec(&self) -> Result<BackendSpec, String> {
        if let Some((key, owners)) = self.foreign_keys().first() {
            let owners: Vec<String> = owners.iter().map(|b| format!("{:?}", b.name())).collect();
            return Err(format!(
                "`{key}` is a setting of backend {}, not of {:?}: remove it",
                owners.join(" or "),
                self.backend.name()
            ));
        }
        Ok(match self.backend {
            Backend::Openai => {
                let urls = self.urls()?;
                let model = self
                    .model
                    .clone()
                    .ok_or("`model` is required for backend \"openai\"")?;
                let batch = self.batch_spec()?;
                let dns_refresh_s = self.dns_refresh()?;
                if batch.is_some() && (urls.len() > 1 || dns_refresh_s.is_some()) {
                    return Err(
                        "`batch = true` sends every call to the Batch API of one server: \
                                give one `url`, without `replicas_from_dns`"
                            .into(),
                    );
                }
                BackendSpec::Openai(OpenaiSpec {
                    urls,
                    dns_refresh_s,
                    model,
                    endpoint: self.endpoint,
                    prefill: self.prefill,
                    api_key_env: self.api_key_env.clone(),
                    batch,
                })
            }
            Backend::Local => {
                let path = self
                    .path
                    .clone()
                    .ok_or("`path` (the GGUF file) is required for backend \"local\"")?;
                if self.threads == Some(0) {
                    return Err("`threads` must be at least 1".into());
                }
                BackendSpec::Local(LocalSpec {
                    path,
                    threads: self.threads,
                })
            }
            Backend::Mock => BackendSpec::Mock(MockSpec {
                latency_ms: self.latency_ms,
            }),
            Backend::Anthropic => BackendSpec::Anthropic(self.anthropic()?),
        })
    }

    /// An `anthropic` model: one `url` (default [`ANTHROPIC_URL`]), a model and a key variable;
    /// its temperature within the API's 0 to 1.
    fn anthropic(&self) -> Result<AnthropicSpec, String> {
        let url = match &self.url {
            None => ANTHROPIC_URL.to_owned(),
            Some(Urls::One(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                url.clone()
            }
            Some(Urls::One(_)) => return Err("`url` must start with http:// or https://".into()),
            Some(Urls::Many(_)) => {
                return Err("`url` of backend \"anthropic\" is one URL, not a list".into());
            }
        };
        let model = self
            .model
            .clone()
            .ok_or("`model` is required for backend \"anthropic\" (e.g. \"claude-sonnet-4-5\")")?;
        let api_key_env = self.api_key_env.clone().ok_or(
            "`api_key_env` is required for backend \"anthropic\": the name of the variable \
             holding the key, e.g. \"ANTHROPIC_API_KEY\"",
        )?;
        if self.temperature > 1.0 {
            return Err("`temperature` must be between 0 and 1 for backend \"anthropic\"".into());
        }
        Ok(AnthropicSpec {
            url,
            model,
            api_key_env,
            batch: self.batch_spec()?,
        })
    }
}

impl ModelFile {
    /// The URLs of an `openai` model: at least one, each `http://` or `https://`, no two alike
    /// (up to a trailing slash). Messages name positions, not URLs, which may hold a password.
    fn urls(&self) -> Result<Vec<String>, String> {
        let urls = match self.url.clone() {
            None => return Err("`url` is required for backend \"openai\"".into()),
            Some(Urls::One(url)) => vec![url],
            Some(Urls::Many(urls)) => urls,
        };
        if urls.is_empty() {
            return Err("`url` must list at least one URL".into());
        }
        for (index, url) in urls.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(match self.url {
                    Some(Urls::Many(_)) => format!(
                        "`url`: URL {} of the list must start with http:// or https://",
                        index + 1
                    ),
                    _ => "`url` must start with http:// or https://".into(),
                });
            }
            if let Some(first) = urls[..index]
                .iter()
                .position(|earlier| earlier.trim_end_matches('/') == url.trim_end_matches('/'))
            {
                return Err(format!(
                    "`url`: URLs {} and {} of the list are the same",
                    first + 1,
                    index + 1
                ));
            }
        }
        Ok(urls)
    }

    /// `dns_refresh_s` when `replicas_from_dns` is on (default [`DEFAULT_DNS_REFRESH_S`]).
    fn dns_refresh(&self) -> Result<Option<u64>, String> {
        match (self.replicas_from_dns, self.dns_refresh_s) {
            (_, Some(0)) => Err("`dns_refresh_s` must be at least 1".into()),
            (false, Some(_)) => Err("`dns_refresh_s` needs `replicas_from_dns = true`".into()),
            (false, None) => Ok(None),
            (true, refresh) => Ok(Some(refresh.unwrap_or(DEFAULT_DNS_REFRESH_S))),
        }
    }
}

impl TryFrom<ModelFile> for ModelSpec {
    type Error = String;

    fn try_from(file: ModelFile) -> Result<Self, String> {
        let max_concurrency =
            Concurrency::from_file(file.max_concurrency, file.max_concurrency_limit)?;
        file.check_policy()?;
        Ok(Self {
            backend: file.backend_spec()?,
            sampling: Sampling {
                temperature: file.temperature,
                max_tokens: file.max_tokens,
                top_logprobs: file.top_logprobs,
            },
            policy: CallPolicy {
                max_concurrency,
                timeout_s: file.timeout_s,
                max_retries: file.max_retries,
                retry_budget_s: file.retry_budget_s,
                rpm: file.rpm,
                tpm: file.tpm,
                price_in: file.price_in,
                price_out: file.price_out,
            },
        })
    }
}

impl From<ModelSpec> for ModelFile {
    fn from(spec: ModelSpec) -> Self {
        let ModelSpec {
            backend,
            sampling,
            policy,
        } = spec;
        let (max_concurrency, max_concurrency_limit) = policy.max_concurrency.to_file();
        let mut file = Self {
            max_concurrency,
            max_concurrency_limit,
            timeout_s: policy.timeout_s,
            max_retries: policy.max_retries,
            retry_budget_s: policy.retry_budget_s,
            rpm: policy.rpm,
            tpm: policy.tpm,
            price_in: policy.price_in,
            price_out: policy.price_out,
            temperature: sampling.temperature,
            max_tokens: sampling.max_tokens,
            top_logprobs: sampling.top_logprobs,
            ..Self::default_for(backend.kind())
        };
        match backend {
            BackendSpec::Openai(openai) => {
                let mut urls = openai.urls;
                // One URL is written as a string, as before lists: the same JSON, the same job.
                file.url = Some(match urls.len() {
                    1 => Urls::One(urls.remove(0)),
                    _ => Urls::Many(urls),
                });
                file.replicas_from_dns = openai.dns_refresh_s.is_some();
                file.dns_refresh_s = openai
                    .dns_refresh_s
                    .filter(|&refresh| refresh != DEFAULT_DNS_REFRESH_S);
                file.model = Some(openai.model);
                file.endpoint = openai.endpoint;
                file.prefill = openai.prefill;
                file.api_key_env = openai.api_key_env;
                file.set_batch(openai.batch);
            }
            BackendSpec::Local(local) => {
                file.path = Some(local.path);
                file.threads = local.threads;
            }
            BackendSpec::Mock(mock) => file.latency_ms = mock.latency_ms,
            BackendSpec::Anthropic(anthropic) => {
                // The default URL is left out, so a job that names it and one that does not
                // are the same job.
                file.url = (anthropic.url != ANTHROPIC_URL).then_some(Urls::One(anthropic.url));
                file.model = Some(anthropic.model);
                file.api_key_env = Some(anthropic.api_key_env);
                file.set_batch(anthropic.batch);
            }
        }
        file
    }
}
