//! The `anthropic` backend: Anthropic's Messages API (`POST {url}/messages`), which has no
//! OpenAI-compatible endpoint with what cai needs.
//!
//! The request is the Messages API's own: the key as `x-api-key`, the `anthropic-version`
//! header, the system turns as the top-level `system` field, the other turns as messages that
//! alternate strictly from `user` (a prompt's chat messages already join consecutive turns of a
//! role), `max_tokens` always, and a prefill as a final assistant message without trailing
//! whitespace (the API refuses one that ends with whitespace). The API takes no seed, so a step's
//! seed is not sent: repeated samples differ by the model's temperature alone.
//!
//! Every failure is classified by the API's error `type` (then by status) into the client
//! layer's [`ModelError`]: `overloaded_error` (529) and `rate_limit_error` (429) are retried as
//! overload, with the server's `retry-after`; `api_error` and other 5xx are retried;
//! `authentication_error`, `permission_error`, `not_found_error` and `billing_error` stop the
//! job; `invalid_request_error` and `request_too_large` fail the sample. The concurrency limit,
//! pacing and retries are the client layer's ([`super::client`]), as for every backend. Neither
//! the key nor a URL's userinfo ever reaches an error or a log line.
//!
//! The API returns no log-probabilities: a job whose judge reads them is refused when it is
//! checked, so [`Model::judge`] is never reached on this backend in a valid job.

use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::{AnthropicSpec, Sampling};
use cai_common::message::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::openai::{
    CONNECT_TIMEOUT, redact, retry_after, scrub, server_message, transport_failure,
};
use super::{CallUsage, Generation, Judgment, Model, ModelError, Prompt};

/// The API version every request names (`anthropic-version`).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A model served by Anthropic's Messages API.
pub struct AnthropicModel {
    /// The job's name for the model (used in every error).
    name: String,
    /// The model name the API knows.
    model: String,
    /// The API's base URL, without a trailing `/`.
    base: String,
    /// `{url}/messages`.
    endpoint: String,
    /// The endpoint without userinfo, query or fragment, for errors.
    shown: String,
    client: reqwest::Client,
    /// The variable the key came from, for messages.
    api_key_env: String,
    api_key: String,
    /// Strings that must never appear in an error: the key and the URL's password.
    secrets: Vec<String>,
    temperature: f32,
    max_tokens: u32,
    timeout: Duration,
}

impl AnthropicModel {
    /// Builds the client of model `name`, each request timing out after `timeout`. Fails
    /// (job-fatal) when the variable named by `api_key_env` is unset or empty.
    pub fn new(
        name: &str,
        spec: &AnthropicSpec,
        sampling: &Sampling,
        timeout: Duration,
    ) -> Result<Self, ModelError> {
        let fatal = |what: String| ModelError::JobFatal(format!("model {name}: {what}"));
        let var = &spec.api_key_env;
        let api_key = match std::env::var(var) {
            Ok(key) if !key.is_empty() => key,
            _ => {
                return Err(fatal(format!(
                    "the API key variable {var} is not set (or is empty or not UTF-8)"
                )));
            }
        };
        let base = spec.url.trim_end_matches('/').to_owned();
        let endpoint = format!("{base}/messages");
        let mut secrets = vec![api_key.clone()];
        secrets.extend(
            reqwest::Url::parse(&spec.url)
                .ok()
                .and_then(|url| url.password().map(str::to_owned)),
        );
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()
            .map_err(|e| fatal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            model: spec.model.clone(),
            shown: redact(&endpoint),
            base,
            endpoint,
            client,
            api_key_env: var.clone(),
            api_key,
            secrets,
            temperature: sampling.temperature,
            max_tokens: sampling.max_tokens,
            timeout,
        })
    }

    /// The request body of a prompt. A conversation whose first turn (after the system turns)
    /// is the assistant's cannot be sent, since the API's messages start with `user`: the
    /// sample fails rather than have a turn invented for it.
    pub(super) fn body(&self, prompt: &Prompt) -> Result<Value, ModelError> {
        let mut system = None;
        let mut messages = Vec::new();
        for (role, content) in prompt.chat_messages() {
            match role {
                Role::System => system = Some(content),
                role => messages.push(json!({"role": role, "content": content})),
            }
        }
        if messages.first().is_none_or(|first| first["role"] != "user") {
            return Err(ModelError::SampleFatal(format!(
                "model {}: the conversation does not start with a user turn, and the Messages \
                 API takes only conversations that do",
                self.name
            )));
        }
        if let Some(prefill) = prompt.prefill.as_deref().map(str::trim_end) {
            if !prefill.is_empty() {
                messages.push(json!({"role": "assistant", "content": prefill}));
            }
        }
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            // Rounded so that 0.7f32 goes out as 0.7, not 0.699999988079071.
            "temperature": (f64::from(self.temperature) * 1e6).round() / 1e6,
            "messages": messages,
        });
        if let Some(system) = system {
            body["system"] = system.into();
        }
        Ok(body)
    }

    /// The API's base URL (the Message Batches API is below it).
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// A request of the API at `url`, with the key and the version headers.
    pub(super) fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", ANTHROPIC_VERSION)
    }

    /// The generation a reply holds.
    pub(super) fn generation(reply: Reply) -> Generation {
        Generation {
            text: reply.text.trim().to_owned(),
            usage: reply.usage,
        }
    }

    /// Sends one request and reads its reply.
    async fn send(&self, body: &Value) -> Result<Reply, ModelError> {
        let response = self
            .request(reqwest::Method::POST, &self.endpoint)
            .json(body)
            .send()
            .await
            .map_err(|error| self.transport_error(error, &self.shown))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|error| self.transport_error(error, &self.shown))?;
        if !status.is_success() {
            return Err(self.status_error(status, retry_after, &text, &self.shown));
        }
        self.parse_reply(&text)
    }

    /// A failure to send the request to `shown` (a URL without secrets) or to read the reply:
    /// always retryable.
    pub(super) fn transport_error(&self, error: reqwest::Error, shown: &str) -> ModelError {
        transport_failure(&self.name, self.timeout, error, shown, &|message| {
            self.scrub(message)
        })
    }

    /// A reply with a non-success status from `shown` (a URL without secrets), classified by
    /// the API's error type, then its status.
    pub(super) fn status_error(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &str,
        shown: &str,
    ) -> ModelError {
        let code = status.as_u16();
        let name = &self.name;
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let kind = parsed
            .as_ref()
            .and_then(|value| value.pointer("/error/type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let server = self.scrub(server_message(body));
        let retryable = |overloaded: bool| ModelError::Retryable {
            message: format!("model {name}: HTTP {code} {kind} from {shown}: {server}"),
            retry_after: retry_after.filter(|_| overloaded),
            unreachable: false,
            overloaded,
            attempts: 1,
        };
        match (kind, code) {
            ("overloaded_error" | "rate_limit_error", _) | (_, 429 | 529) => retryable(true),
            ("api_error", _) | (_, 500..=599 | 408 | 409) => retryable(false),
            ("authentication_error", _) | (_, 401) => ModelError::JobFatal(format!(
                "model {name}: the API refused the key (HTTP {code} authentication_error); check \
                 the environment variable {}: {server}",
                self.api_key_env
            )),
            ("permission_error" | "billing_error", _) | (_, 402 | 403) => ModelError::JobFatal(
                format!("model {name}: the API refused the request (HTTP {code} {kind}): {server}"),
            ),
            ("not_found_error", _) | (_, 404) => ModelError::JobFatal(format!(
                "model {name}: the API at {shown} does not know the model {:?} (HTTP {code}): \
                 {server}",
                self.model
            )),
            _ => ModelError::SampleFatal(format!(
                "model {name}: the API rejected the request (HTTP {code} {kind}): {server}"
            )),
        }
    }

    /// Reads a 2xx body: the text of its `text` content blocks, and its usage. A body that is
    /// not a message is retryable (a proxy's page, a cut-off reply).
    pub(super) fn parse_reply(&self, body: &str) -> Result<Reply, ModelError> {
        let retryable = |what: String| ModelError::Retryable {
            message: self.scrub(format!(
                "model {}: the reply from {} {what}",
                self.name, self.shown
            )),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        };
        let value: Value = serde_json::from_str(body)
            .map_err(|e| retryable(format!("is not complete JSON ({e})")))?;
        let Some(content) = value.get("content").and_then(Value::as_array) else {
            return Err(retryable(format!(
                "has no `content`: {}",
                server_message(body)
            )));
        };
        let text: String = content
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect();
        let count = |field: &str| value["usage"][field].as_u64().unwrap_or(0);
        Ok(Reply {
            text,
            usage: CallUsage {
                tokens_in: count("input_tokens"),
                tokens_out: count("output_tokens"),
            },
        })
    }

    /// Removes every secret from a message.
    pub(super) fn scrub(&self, message: String) -> String {
        scrub(&self.secrets, message)
    }
}

/// The useful part of a successful reply.
pub(super) struct Reply {
    text: String,
    usage: CallUsage,
}

#[async_trait]
impl Model for AnthropicModel {
    async fn generate(&self, prompt: &Prompt, _seed: u64) -> Result<Generation, ModelError> {
        let reply = self.send(&self.body(prompt)?).await?;
        Ok(Self::generation(reply))
    }

    async fn judge(&self, _prompt: &Prompt, _seed: u64) -> Result<Judgment, ModelError> {
        Err(ModelError::JobFatal(format!(
            "model {}: the Anthropic Messages API returns no log-probabilities to judge from",
            self.name
        )))
    }

    /// The API sees the turns' text.
    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        let chars: usize = prompt
            .turns
            .iter()
            .map(|turn| turn.text.chars().count())
            .sum();
        (chars as u64).div_ceil(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Speaker, Turn};

    /// The key variable: one that is always set (a test cannot set one without `unsafe`), its
    /// value standing in for the key.
    const KEY_VAR: &str = "PATH";

    fn key() -> String {
        std::env::var(KEY_VAR).unwrap()
    }

    fn model() -> AnthropicModel {
        let spec = AnthropicSpec {
            url: "https://user:hunter2@api.example.com/v1/".into(),
            model: "claude-test".into(),
            api_key_env: KEY_VAR.into(),
            batch: None,
        };
        let sampling = Sampling {
            temperature: 0.7,
            max_tokens: 77,
            top_logprobs: 20,
        };
        AnthropicModel::new("policy", &spec, &sampling, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn the_system_goes_on_top_and_a_prefill_loses_its_trailing_whitespace() {
        let model = model();
        let prompt = Prompt {
            turns: vec![
                Turn::new(Speaker::System, "be kind"),
                Turn::new(Speaker::Human, "hi"),
                Turn::new(Speaker::Assistant, "hello"),
                Turn::new(Speaker::CritiqueRequest, "critique it"),
            ],
            reply_as: Some(Speaker::Critique),
            prefill: Some("The answer is (".into()),
        };
        assert_eq!(
            model.body(&prompt).unwrap(),
            json!({
                "model": "claude-test",
                "max_tokens": 77,
                "temperature": 0.7,
                "system": "be kind",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "critique it"},
                    {"role": "assistant", "content": "The answer is ("},
                ],
            })
        );
        let trailing = Prompt {
            prefill: Some("Verdict: \n".into()),
            ..prompt
        };
        let body = model.body(&trailing).unwrap();
        assert_eq!(body["messages"][3]["content"], "Verdict:");
        assert!(body.get("seed").is_none());
    }

    #[test]
    fn a_conversation_that_opens_with_the_assistant_fails_the_sample() {
        let prompt = Prompt {
            turns: vec![Turn::new(Speaker::Assistant, "hello")],
            reply_as: Some(Speaker::Assistant),
            prefill: None,
        };
        assert!(matches!(
            model().body(&prompt),
            Err(ModelError::SampleFatal(message)) if message.contains("user turn")
        ));
    }

    #[test]
    fn error_types_are_classified_and_carry_no_secret() {
        let model = model();
        let error = |code: u16, kind: &str| {
            let body = format!(
                r#"{{"type": "error", "error": {{"type": "{kind}", "message": "no {} for user:hunter2"}}}}"#,
                key()
            );
            let status = StatusCode::from_u16(code).unwrap();
            model.status_error(
                status,
                Some(Duration::from_secs(3)),
                &body,
                "https://api.example.com/v1",
            )
        };
        let retried = |error: ModelError| match error {
            ModelError::Retryable {
                overloaded,
                retry_after,
                ..
            } => Some((overloaded, retry_after)),
            _ => None,
        };
        let three = Some(Duration::from_secs(3));
        assert_eq!(retried(error(529, "overloaded_error")), Some((true, three)));
        assert_eq!(retried(error(429, "rate_limit_error")), Some((true, three)));
        assert_eq!(retried(error(500, "api_error")), Some((false, None)));
        assert_eq!(retried(error(503, "")), Some((false, None)));
        let auth = error(401, "authentication_error");
        assert!(
            matches!(&auth, ModelError::JobFatal(m) if m.contains(KEY_VAR)),
            "{auth}"
        );
        for (code, kind) in [(403, "permission_error"), (404, "not_found_error")] {
            assert!(
                matches!(error(code, kind), ModelError::JobFatal(_)),
                "{kind}"
            );
        }
        for (code, kind) in [(400, "invalid_request_error"), (413, "request_too_large")] {
            assert!(
                matches!(error(code, kind), ModelError::SampleFatal(_)),
                "{kind}"
            );
        }
        for (code, kind) in [(401, "authentication_error"), (529, "overloaded_error")] {
            let text = error(code, kind).to_string();
            assert!(
                !text.contains(&key()) && !text.contains("hunter2"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_reply_is_its_text_blocks_and_its_usage() {
        let reply = model()
            .parse_reply(
                r#"{"type": "message", "role": "assistant", "content": [
                    {"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 12, "output_tokens": 3}}"#,
            )
            .unwrap();
        assert_eq!(reply.text, "Hello there");
        assert_eq!(
            reply.usage,
            CallUsage {
                tokens_in: 12,
                tokens_out: 3
            }
        );
        assert!(matches!(
            model().parse_reply("<html>bad gateway</html>"),
            Err(ModelError::Retryable { .. })
        ));
    }
}
