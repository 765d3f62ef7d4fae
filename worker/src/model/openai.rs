//! The `openai` backend: any OpenAI-compatible HTTP server (vLLM, SGLang, TGI, llama.cpp server,
//! Ollama, hosted APIs), on its chat or its completions endpoint.
//!
//! A model may be served by several replicas ([`super::replicas`]): each attempt goes to the
//! one with the fewest attempts outstanding, so a retry may go to another. One
//! [`reqwest::Client`] per replica reuses connections (HTTP/2 where the server offers it over
//! TLS). A call here is one request: this module speaks the wire format and classifies every
//! failure as [`ModelError::Retryable`] (with the server's `Retry-After`; `overloaded` for a 429,
//! a 503 and a timeout, `unreachable` when the server cannot be reached),
//! [`ModelError::SampleFatal`] or [`ModelError::JobFatal`]; the concurrency limit, the `rpm` and
//! `tpm` pacing and the retries are the client layer's ([`super::client`]), as for every backend.
//! Neither the API key nor a URL's userinfo ever reaches an error or a log line.
//!
//! Judging asks for the top log-probabilities of the first few generated tokens and reads both
//! wire formats servers use: the chat format (`logprobs.content[i].top_logprobs`, a list of
//! `{token, logprob}`) and the legacy completions format (`logprobs.top_logprobs[i]`, a map from
//! token to log-probability), whichever endpoint answered.

use std::error::Error as _;
use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::{Endpoint, OpenaiSpec, Sampling};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};

use super::replicas::{Connect, Discovery, Health, Replicas, Resolver, Target, system_resolver};
use super::{CallUsage, Generation, Judgment, Model, ModelError, Prompt, TokenLogprob};

/// How long establishing a connection may take (every HTTP backend).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Generated positions a judgment asks for: a model may emit a shared `" ("` before the letter.
const JUDGE_MAX_TOKENS: u32 = 3;
/// Longest server message quoted in an error.
const MAX_SERVER_MESSAGE: usize = 300;

/// A model served by an OpenAI-compatible HTTP server.
pub struct OpenAiModel {
    /// The job's name for the model (used in every error).
    name: String,
    /// The model name the server knows.
    model: String,
    /// Which endpoint is called.
    endpoint: Endpoint,
    /// Whether the server continues a final assistant message (a prompt's `prefill`).
    prefill: bool,
    /// The endpoint's path below a replica's base URL.
    path: &'static str,
    /// The servers requests go to, each with its client.
    replicas: Replicas<reqwest::Client>,
    /// A client with the same timeouts bound to no replica: the Batch API's (batch mode has
    /// one server, the first URL).
    batch_client: reqwest::Client,
    /// The variable the key came from, for messages.
    api_key_env: Option<String>,
    /// The API key, sent as a bearer token.
    api_key: Option<String>,
    /// Strings that must never appear in an error: the key and the URLs' passwords.
    secrets: Vec<String>,
    temperature: f32,
    max_tokens: u32,
    timeout: Duration,
    top_logprobs: u32,
}

/// The useful part of a successful reply.
#[derive(Clone)]
pub(super) struct Reply {
    /// `choices[0]`.
    choice: Value,
    /// The generated text (`message.content` or `text`).
    text: String,
    usage: CallUsage,
}

impl OpenAiModel {
    /// Builds the client of model `name`, each request timing out after `timeout`. Fails
    /// (job-fatal) when the variable named by `api_key_env` is unset or empty.
    pub fn new(
        name: &str,
        spec: &OpenaiSpec,
        sampling: &Sampling,
        timeout: Duration,
    ) -> Result<Self, ModelError> {
        Self::with_resolver(name, spec, sampling, timeout, system_resolver())
    }

    /// As [`OpenAiModel::new`], with the names of DNS replicas (`replicas_from_dns`) looked up
    /// by `resolver` instead of the system's: a test serves a made-up name from addresses of
    /// its own.
    pub fn with_resolver(
        name: &str,
        spec: &OpenaiSpec,
        sampling: &Sampling,
        timeout: Duration,
        resolver: Resolver,
    ) -> Result<Self, ModelError> {
        let fatal = |what: String| ModelError::JobFatal(format!("model {name}: {what}"));
        let urls = spec.urls.clone();
        let model = spec.model.clone();
        let api_key = match &spec.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Some(key),
                _ => {
                    return Err(fatal(format!(
                        "the API key variable {var} is not set (or is empty or not UTF-8)"
                    )));
                }
            },
        };
        let path = match spec.endpoint {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
        };
        let mut secrets: Vec<String> = api_key.iter().cloned().collect();
        secrets.extend(urls.iter().filter_map(|url| {
            reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.password().map(str::to_owned))
        }));
        let discovery = match spec.dns_refresh_s {
            Some(refresh) => Discovery::Dns {
                refresh: Duration::from_secs(refresh),
                resolver,
            },
            None => Discovery::Urls,
        };
        let replicas = Replicas::new(name, urls, discovery, connect(timeout)).map_err(fatal)?;
        let batch_client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()
            .map_err(|e| fatal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            model,
            endpoint: spec.endpoint,
            prefill: spec.prefill,
            path,
            replicas,
            batch_client,
            api_key_env: spec.api_key_env.clone(),
            api_key,
            secrets,
            temperature: sampling.temperature,
            max_tokens: sampling.max_tokens,
            timeout,
            top_logprobs: sampling.top_logprobs,
        })
    }

    /// The request body of a generation (`judge == false`) or a judgment (a batch line's body
    /// too).
    pub(super) fn body(&self, prompt: &Prompt, seed: u64, judge: bool) -> Value {
        let (temperature, max_tokens) = if judge {
            (0.0, JUDGE_MAX_TOKENS)
        } else {
            // Rounded so that 0.7f32 goes out as 0.7, not 0.699999988079071.
            (
                (f64::from(self.temperature) * 1e6).round() / 1e6,
                self.max_tokens,
            )
        };
        let mut body = json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            // Servers parse the seed as a signed 64-bit integer (vLLM rejects larger ones).
            "seed": seed & i64::MAX as u64,
        });
        match self.endpoint {
            Endpoint::Chat => {
                let mut messages: Vec<Value> = prompt
                    .chat_messages()
                    .into_iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect();
                if let (true, Some(prefill)) = (self.prefill, &prompt.prefill) {
                    // vLLM's names; llama.cpp's server continues a final assistant message
                    // by itself.
                    messages.push(json!({"role": "assistant", "content": prefill}));
                    body["continue_final_message"] = true.into();
                    body["add_generation_prompt"] = false.into();
                }
                body["messages"] = messages.into();
                if judge {
                    body["logprobs"] = true.into();
                    body["top_logprobs"] = self.top_logprobs.into();
                }
            }
            Endpoint::Completions => {
                body["prompt"] = prompt.transcript().into();
                body["stop"] = Prompt::transcript_stops().into();
                if judge {
                    body["logprobs"] = self.top_logprobs.into();
                }
            }
        }
        body
    }

    /// Sends one request to the replica whose turn it is and reads its reply.
    async fn send(&self, body: &Value) -> Result<Reply, ModelError> {
        let lease = self.replicas.pick().await?;
        let (health, reply) = self
            .attempt(lease.client(), lease.target(), lease.shown(), body)
            .await;
        lease.settle(health);
        reply
    }

    /// One request to the replica at `target` (`shown` without secrets), and how it went for
    /// the replica's health: a refused connection, a 5xx, a timeout or a cut-off or unreadable
    /// reply count against it; any other reply, an error status included, shows it alive.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        target: &Target,
        shown: &str,
        body: &Value,
    ) -> (Health, Result<Reply, ModelError>) {
        let url = format!("{}/{}", target.base.trim_end_matches('/'), self.path);
        let shown = format!("{}/{}", shown.trim_end_matches('/'), self.path);
        let mut request = client.post(url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let health = if error.is_connect() {
                    Health::Refused
                } else {
                    Health::Failed
                };
                return (health, Err(self.transport_error(error, &shown)));
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match response.text().await {
            Ok(text) => text,
            Err(error) => return (Health::Failed, Err(self.transport_error(error, &shown))),
        };
        if !status.is_success() {
            let health = if status.is_server_error() {
                Health::Failed
            } else {
                Health::Answered
            };
            return (
                health,
                Err(self.status_error(status, retry_after, &text, &shown)),
            );
        }
        match self.parse_reply(&text, &shown) {
            Ok(reply) => (Health::Answered, Ok(reply)),
            Err(error) => (Health::Failed, Err(error)),
        }
    }

    /// A failure to send the request to `shown` or to read the reply: always retryable.
    pub(super) fn transport_error(&self, error: reqwest::Error, shown: &str) -> ModelError {
        transport_failure(&self.name, self.timeout, error, shown, &|message| {
            self.scrub(message)
        })
    }

    /// A reply with a non-success status from `shown`.
    pub(super) fn status_error(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &str,
        shown: &str,
    ) -> ModelError {
        let code = status.as_u16();
        let name = &self.name;
        let server = self.scrub(server_message(body));
        match code {
            400 | 413 | 422 => ModelError::SampleFatal(format!(
                "model {name}: the server rejected the request (HTTP {code}): {server}"
            )),
            401 | 403 => ModelError::JobFatal(match &self.api_key_env {
                Some(var) => format!(
                    "model {name}: the server refused the API key (HTTP {code}); \
                     check the environment variable {var}"
                ),
                None => format!(
                    "model {name}: the server refused the request (HTTP {code}) and no API key \
                     is configured; set `api_key_env`"
                ),
            }),
            404 => ModelError::JobFatal(format!(
                "model {name}: the server at {shown} does not know the model {:?} or the \
                 endpoint (HTTP 404): {server}",
                self.model
            )),
            408 | 409 | 425 | 429 | 500..=599 => ModelError::Retryable {
                message: format!("model {name}: HTTP {code} from {shown}: {server}"),
                retry_after: retry_after.filter(|_| code == 429 || code == 503),
                unreachable: false,
                overloaded: code == 429 || code == 503,
                attempts: 1,
            },
            _ => ModelError::SampleFatal(format!(
                "model {name}: unexpected HTTP {code} from {shown}: {server}"
            )),
        }
    }

    /// Reads a 2xx body from `shown`; a body that is not JSON or has no choice is retryable.
    pub(super) fn parse_reply(&self, body: &str, shown: &str) -> Result<Reply, ModelError> {
        let retryable = |what: String| ModelError::Retryable {
            message: self.scrub(format!(
                "model {}: the reply from {shown} {what}",
                self.name
            )),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        };
        let value: Value = serde_json::from_str(body)
            .map_err(|e| retryable(format!("is not complete JSON ({e})")))?;
        let Some(choice) = value
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
        else {
            return Err(retryable(format!(
                "has no `choices`: {}",
                server_message(body)
            )));
        };
        let text = choice
            .pointer("/message/content")
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let count = |field: &str| {
            value
                .get("usage")
                .and_then(|usage| usage.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Ok(Reply {
            choice: choice.clone(),
            text,
            usage: CallUsage {
                tokens_in: count("prompt_tokens"),
                tokens_out: count("completion_tokens"),
            },
        })
    }

    /// Removes every secret from a message.
    pub(super) fn scrub(&self, message: String) -> String {
        scrub(&self.secrets, message)
    }

    /// The HTTP client and the API key, for the Batch API of the same server.
    pub(super) fn client(&self) -> (&reqwest::Client, Option<&str>) {
        (&self.batch_client, self.api_key.as_deref())
    }

    /// The generation a reply holds.
    pub(super) fn generation(reply: Reply) -> Generation {
        Generation {
            text: reply.text.trim().to_owned(),
            usage: reply.usage,
        }
    }

    /// The judgment a reply holds; one without logprobs fails the sample.
    pub(super) fn judgment(&self, reply: Reply) -> Result<Judgment, ModelError> {
        let positions = positions(&reply.choice);
        if positions.is_empty() {
            let asked = match self.endpoint {
                Endpoint::Chat => "`logprobs` and `top_logprobs` on /chat/completions",
                Endpoint::Completions => "`logprobs` on /completions",
            };
            return Err(ModelError::SampleFatal(format!(
                "model {}: the server returned no logprobs; check that it supports {asked}",
                self.name
            )));
        }
        Ok(Judgment {
            positions,
            text: reply.text,
            usage: reply.usage,
        })
    }
}

#[async_trait]
impl Model for OpenAiModel {
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        let reply = self.send(&self.body(prompt, seed, false)).await?;
        Ok(Self::generation(reply))
    }

    async fn judge(&self, prompt: &Prompt, seed: u64) -> Result<Judgment, ModelError> {
        let reply = self.send(&self.body(prompt, seed, true)).await?;
        self.judgment(reply)
    }

    /// A chat endpoint sees the turns' text, a completions endpoint the whole transcript.
    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        let chars = match self.endpoint {
            Endpoint::Chat => prompt
                .turns
                .iter()
                .map(|turn| turn.text.chars().count())
                .sum(),
            Endpoint::Completions => prompt.transcript().chars().count(),
        };
        (chars as u64).div_ceil(4)
    }
}

/// A failure of model `name` to send a request to `shown` (a URL without secrets) or to read
/// its reply, within `timeout`: always retryable, `unreachable` when no connection was made,
/// `overloaded` when the reply did not come in time. Every HTTP backend reads its failures so;
/// `scrub` takes the backend's secrets out of the message.
pub(super) fn transport_failure(
    name: &str,
    timeout: Duration,
    error: reqwest::Error,
    shown: &str,
    scrub: &dyn Fn(String) -> String,
) -> ModelError {
    let error = error.without_url();
    let unreachable = error.is_connect();
    let what = if unreachable {
        "cannot connect to".to_owned()
    } else if error.is_timeout() {
        format!("no reply within {} s from", timeout.as_secs())
    } else if error.is_body() || error.is_decode() {
        "the reply was cut off from".to_owned()
    } else {
        "the request failed to".to_owned()
    };
    let mut causes = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    ModelError::Retryable {
        message: scrub(format!(
            "model {name}: {what} {shown}: {}",
            causes.join(": ")
        )),
        retry_after: None,
        unreachable,
        overloaded: error.is_timeout() && !unreachable,
        attempts: 1,
    }
}

/// Builds a replica's client: connect and request timeouts, and for a replica found by DNS the
/// name resolved to its address, so that the Host header and TLS keep the name.
fn connect(timeout: Duration) -> Connect<reqwest::Client> {
    Box::new(move |target: &Target| {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout);
        if let Some((name, address)) = target.pinned_name() {
            builder = builder.resolve(&name, address);
        }
        builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    })
}

/// `url` without userinfo, query or fragment, safe to show in errors and logs.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            // Both fail only for URLs that cannot have userinfo at all.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// A `Retry-After` header in seconds (the HTTP-date form is ignored).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// `message` with every one of `secrets` (an API key, a URL's password) replaced: what every
/// HTTP backend does to a message before it reaches an error or a log line.
pub(super) fn scrub(secrets: &[String], mut message: String) -> String {
    for secret in secrets {
        if !secret.is_empty() {
            message = message.replace(secret.as_str(), "[redacted]");
        }
    }
    message
}

/// The server's error message from an error body (OpenAI and Anthropic `{"error":
/// {"message"}}`, vLLM `{"message"}`, TGI and Ollama `{"error": "…"}`), else the body itself,
/// shortened.
pub(super) fn server_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .or_else(|| value.get("error"))
                .or_else(|| value.get("message"))
                .or_else(|| value.get("detail"))
                .and_then(Value::as_str)
        })
        .unwrap_or(body)
        .trim();
    if message.is_empty() {
        return "(no message)".to_owned();
    }
    match message.char_indices().nth(MAX_SERVER_MESSAGE) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

/// The top log-probabilities per generated position of a choice, in either wire format; empty
/// when the choice carries none.
fn positions(choice: &Value) -> Vec<Vec<TokenLogprob>> {
    let Some(logprobs) = choice.get("logprobs") else {
        return Vec::new();
    };
    if let Some(content) = logprobs.get("content").and_then(Value::as_array) {
        content.iter().map(chat_position).collect()
    } else if let Some(top) = logprobs.get("top_logprobs").and_then(Value::as_array) {
        top.iter().map(legacy_position).collect()
    } else {
        Vec::new()
    }
}

/// One entry of `logprobs.content`: its `top_logprobs`, or the sampled token alone if none.
fn chat_position(entry: &Value) -> Vec<TokenLogprob> {
    let top: Vec<TokenLogprob> = entry
        .get("top_logprobs")
        .and_then(Value::as_array)
        .map(|candidates| candidates.iter().filter_map(token_logprob).collect())
        .unwrap_or_default();
    if top.is_empty() {
        token_logprob(entry).into_iter().collect()
    } else {
        top
    }
}

/// A `{"token", "logprob"}` object.
fn token_logprob(value: &Value) -> Option<TokenLogprob> {
    Some(TokenLogprob {
        token: value.get("token")?.as_str()?.to_owned(),
        logprob: value.get("logprob")?.as_f64()?,
    })
}

/// One map of the legacy `logprobs.top_logprobs`, most probable first.
fn legacy_position(map: &Value) -> Vec<TokenLogprob> {
    let mut candidates: Vec<TokenLogprob> = map
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(token, logprob)| {
            Some(TokenLogprob {
                token: token.clone(),
                logprob: logprob.as_f64()?,
            })
        })
        .collect();
    candidates.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    candidates
}

#[cfg(test)]
mod tests {
    use cai_common::job::{BackendSpec, ModelSpec};

    use super::*;
    use crate::model::letters::probability_of_a;

    fn spec(url: &str) -> ModelSpec {
        serde_json::from_value(json!({
            "backend": "openai",
            "url": url,
            "model": "judge-7b",
            "api_key_env": "PATH",
        }))
        .unwrap()
    }

    /// The OpenAI backend of `spec`, as `model::build` makes it.
    fn backend(name: &str, spec: &ModelSpec) -> Result<OpenAiModel, ModelError> {
        let BackendSpec::Openai(openai) = &spec.backend else {
            panic!("an openai model: {spec:?}");
        };
        let timeout = Duration::from_secs(spec.policy.timeout_s);
        OpenAiModel::new(name, openai, &spec.sampling, timeout)
    }

    /// `spec`'s OpenAI settings, to edit.
    fn openai(spec: &mut ModelSpec) -> &mut OpenaiSpec {
        match &mut spec.backend {
            BackendSpec::Openai(openai) => openai,
            other => panic!("an openai model: {other:?}"),
        }
    }

    fn model() -> OpenAiModel {
        backend("judge", &spec("http://alice:hunter2@127.0.0.1:8000/v1/")).unwrap()
    }

    #[test]
    fn reads_the_chat_logprob_format() {
        let choice = json!({
            "message": {"role": "assistant", "content": " (A"},
            "logprobs": {"content": [
                {"token": " (", "logprob": -0.01, "top_logprobs": [
                    {"token": " (", "logprob": -0.01, "bytes": [32, 40]},
                    {"token": " The", "logprob": -4.6},
                ]},
                {"token": "A", "logprob": -0.3, "top_logprobs": [
                    {"token": "A", "logprob": 0.6f64.ln()},
                    {"token": "B", "logprob": 0.2f64.ln()},
                ]},
                {"token": ")", "logprob": -0.5, "top_logprobs": []},
            ]},
        });
        let positions = positions(&choice);
        assert_eq!(positions.len(), 3);
        assert_eq!(positions[0][1].token, " The");
        assert_eq!(
            positions[2],
            vec![TokenLogprob {
                token: ")".into(),
                logprob: -0.5
            }]
        );
        assert!((probability_of_a(&positions).unwrap() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn reads_the_legacy_logprob_format_most_probable_first() {
        let choice = json!({
            "text": " B",
            "logprobs": {
                "tokens": [" B"],
                "token_logprobs": [-0.4],
                "top_logprobs": [{" A": 0.1f64.ln(), " B": 0.3f64.ln(), "B": 0.4f64.ln(), "x": -9.0}],
            },
        });
        let positions = positions(&choice);
        let tokens: Vec<&str> = positions[0].iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tokens, ["B", " B", " A", "x"]);
        assert!((probability_of_a(&positions).unwrap() - 0.125).abs() < 1e-12);
    }

    #[test]
    fn a_choice_without_logprobs_has_no_positions() {
        assert!(positions(&json!({"text": "A"})).is_empty());
        assert!(positions(&json!({"text": "A", "logprobs": null})).is_empty());
        assert!(positions(&json!({"text": "A", "logprobs": {"content": null}})).is_empty());
    }

    #[test]
    fn redaction_removes_userinfo_query_and_fragment() {
        assert_eq!(
            redact("http://alice:hunter2@127.0.0.1:8000/v1/chat/completions"),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            redact("https://token@api.example.com/v1"),
            "https://api.example.com/v1"
        );
        assert_eq!(
            redact("https://api.example.com/v1/completions?api-key=s3cret#frag"),
            "https://api.example.com/v1/completions"
        );
        assert_eq!(
            redact("http://localhost:11434/v1"),
            "http://localhost:11434/v1"
        );
        assert_eq!(redact("not a url with s3cret"), "<unparseable URL>");
    }

    #[tokio::test]
    async fn no_secret_reaches_an_error() {
        let model = model();
        let lease = model.replicas.pick().await.unwrap();
        assert_eq!(lease.shown(), "http://127.0.0.1:8000/v1/");
        let shown = format!("{}/{}", lease.shown(), model.path);
        let key = std::env::var("PATH").unwrap();
        let body = format!(r#"{{"error": {{"message": "bad key {key} for alice:hunter2"}}}}"#);
        for status in [400, 401, 404, 429, 500, 418] {
            let status = StatusCode::from_u16(status).unwrap();
            let error = model.status_error(status, None, &body, &shown);
            let text = error.to_string();
            assert!(!text.contains(&key) && !text.contains("hunter2"), "{text}");
        }
    }

    #[tokio::test]
    async fn every_replica_is_called_in_turn_and_none_of_their_passwords_reaches_an_error() {
        let mut spec = spec("http://127.0.0.1:8000/v1");
        openai(&mut spec).urls = vec![
            "http://alice:hunter2@10.0.0.1:8000/v1".into(),
            "http://bob:swordfish@10.0.0.2:8000/v1/".into(),
        ];
        let model = backend("judge", &spec).unwrap();
        let mut shown = Vec::new();
        for _ in 0..2 {
            shown.push(model.replicas.pick().await.unwrap().shown().to_owned());
        }
        assert_eq!(
            shown,
            ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1/"]
        );
        let body = r#"{"error": {"message": "hunter2 and swordfish"}}"#;
        let error = model.status_error(StatusCode::BAD_GATEWAY, None, body, &shown[1]);
        let text = error.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("swordfish"),
            "{text}"
        );
        assert!(text.contains("http://10.0.0.2:8000/v1/"), "{text}");
    }

    #[test]
    fn statuses_are_classified() {
        let model = model();
        let body = r#"{"error": {"message": "maximum context length is 4096 tokens"}}"#;
        let error = |status: u16, retry_after: Option<Duration>| {
            let status = StatusCode::from_u16(status).unwrap();
            model.status_error(
                status,
                retry_after,
                body,
                "http://127.0.0.1:8000/v1/chat/completions",
            )
        };
        match error(400, None) {
            ModelError::SampleFatal(message) => {
                assert!(message.contains("maximum context length"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match error(401, None) {
            ModelError::JobFatal(message) => assert_eq!(
                message,
                "model judge: the server refused the API key (HTTP 401); \
                 check the environment variable PATH"
            ),
            other => panic!("{other:?}"),
        }
        match error(404, None) {
            ModelError::JobFatal(message) => {
                assert!(
                    message.contains("\"judge-7b\"") && message.contains("404"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        let five = Some(Duration::from_secs(5));
        assert!(matches!(
            error(429, five),
            ModelError::Retryable { retry_after: Some(d), unreachable: false, .. } if d == Duration::from_secs(5)
        ));
        assert!(matches!(
            error(502, five),
            ModelError::Retryable {
                retry_after: None,
                overloaded: false,
                ..
            }
        ));
        for status in [429, 503] {
            assert!(
                matches!(
                    error(status, None),
                    ModelError::Retryable {
                        overloaded: true,
                        unreachable: false,
                        ..
                    }
                ),
                "{status}"
            );
        }
        for status in [408, 409, 425, 500, 504] {
            assert!(
                matches!(
                    error(status, None),
                    ModelError::Retryable {
                        overloaded: false,
                        ..
                    }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "12".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn prompt_tokens_are_estimated_from_the_text_the_endpoint_sees() {
        use crate::model::{Speaker, Turn};
        let prompt = Prompt {
            turns: vec![Turn::new(Speaker::Human, "héllo wörld")],
            reply_as: Some(Speaker::Assistant),
            prefill: None,
        };
        // 11 characters (not 13 bytes) → 3 tokens.
        assert_eq!(model().prompt_tokens(&prompt), 3);
        let mut completions = spec("http://127.0.0.1:8000/v1");
        openai(&mut completions).endpoint = Endpoint::Completions;
        let model = backend("policy", &completions).unwrap();
        // "\n\nHuman: héllo wörld\n\nAssistant:" is 32 characters → 8 tokens.
        assert_eq!(model.prompt_tokens(&prompt), 8);
    }

    #[test]
    fn server_messages_are_found_in_every_dialect_and_shortened() {
        assert_eq!(
            server_message(r#"{"error": {"message": "too long"}}"#),
            "too long"
        );
        assert_eq!(
            server_message(r#"{"object": "error", "message": "nope"}"#),
            "nope"
        );
        assert_eq!(
            server_message(r#"{"error": "model not found"}"#),
            "model not found"
        );
        assert_eq!(server_message("Bad Gateway"), "Bad Gateway");
        assert_eq!(server_message(""), "(no message)");
        assert_eq!(
            server_message(&"é".repeat(1000)).chars().count(),
            MAX_SERVER_MESSAGE + 1
        );
    }

    #[test]
    fn request_bodies_follow_the_endpoint() {
        use crate::model::{Speaker, Turn};
        let prompt = Prompt {
            turns: vec![Turn::new(Speaker::Human, "hi")],
            reply_as: Some(Speaker::Assistant),
            prefill: None,
        };
        let chat = model();
        let body = chat.body(&prompt, u64::MAX, true);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["seed"], json!(i64::MAX));
        assert_eq!(
            (body["logprobs"].clone(), body["top_logprobs"].clone()),
            (json!(true), json!(20))
        );
        assert_eq!(
            (body["temperature"].clone(), body["max_tokens"].clone()),
            (json!(0.0), json!(3))
        );

        let mut completions = spec("http://127.0.0.1:8000/v1");
        openai(&mut completions).endpoint = Endpoint::Completions;
        completions.sampling.temperature = 0.7;
        let model = backend("policy", &completions).unwrap();
        assert_eq!(model.path, "completions");
        let body = model.body(&prompt, 7, false);
        assert_eq!(body["prompt"], json!("\n\nHuman: hi\n\nAssistant:"));
        assert_eq!(body["stop"], json!(Prompt::transcript_stops()));
        assert_eq!(body["temperature"], json!(0.7));
        assert!(body.get("logprobs").is_none());
    }

    #[test]
    fn a_missing_key_variable_is_job_fatal_and_names_the_variable() {
        let mut spec = spec("http://127.0.0.1:8000/v1");
        openai(&mut spec).api_key_env = Some("CAI_TEST_UNSET_KEY_VARIABLE".into());
        match backend("policy", &spec) {
            Err(ModelError::JobFatal(message)) => {
                assert!(message.contains("CAI_TEST_UNSET_KEY_VARIABLE"), "{message}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("built without a key"),
        }
    }
}
