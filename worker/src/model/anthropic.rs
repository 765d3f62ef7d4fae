//! The `anthropic` backend: Anthropic's Messages API (`POST {url}/messages`).
//!
//! A request carries the key as `x-api-key` and the `anthropic-version` header; the system
//! turns go in the top-level `system` field, the others as messages that alternate strictly
//! from a `user` message (what [`Prompt::chat_messages`] gives; a conversation that opens with
//! an assistant turn cannot be sent, and fails the sample); `max_tokens` is always sent; a
//! prompt's `prefill` is a final assistant message without trailing whitespace, which the API
//! continues. The API takes no seed, so verdict mode's votes are independent by sampling alone,
//! and returns no log-probabilities, so it cannot `judge` (the job check refuses a `logprobs` or
//! `cot` judge on it). Errors are classified from the error body's `type` and the status:
//! `overloaded_error` (529) and `rate_limit_error` (429) are retryable and overloaded, with the
//! server's `retry-after`; `api_error` (500) retryable; `authentication_error`,
//! `permission_error` and `not_found_error` stop the job; `invalid_request_error` and
//! `request_too_large` fail the sample. The key never reaches an error.

use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::{AnthropicSpec, Sampling};
use cai_common::message::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::openai::{redact, retry_after, server_message};
use super::{CallUsage, Generation, Judgment, Model, ModelError, Prompt};

/// The API version every request names.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A model served by Anthropic's Messages API.
pub struct AnthropicModel {
    name: String,
    model: String,
    /// `{url}/messages`.
    endpoint: String,
    client: reqwest::Client,
    api_key_env: Option<String>,
    api_key: Option<String>,
    temperature: f32,
    max_tokens: u32,
    timeout: Duration,
}

impl AnthropicModel {
    /// The client of model `name`; fails (job-fatal) when `api_key_env` names a variable that
    /// is unset or empty.
    pub fn new(
        name: &str,
        spec: &AnthropicSpec,
        sampling: &Sampling,
        timeout: Duration,
    ) -> Result<Self, ModelError> {
        let fatal = |what: String| ModelError::JobFatal(format!("model {name}: {what}"));
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
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()
            .map_err(|e| fatal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            model: spec.model.clone(),
            endpoint: format!("{}/messages", spec.url.trim_end_matches('/')),
            client,
            api_key_env: spec.api_key_env.clone(),
            api_key,
            temperature: sampling.temperature,
            max_tokens: sampling.max_tokens,
            timeout,
        })
    }

    /// The request body of a prompt, or why the prompt cannot be sent.
    pub fn body(&self, prompt: &Prompt) -> Result<Value, ModelError> {
        let mut system = None;
        let mut messages: Vec<(Role, String)> = Vec::new();
        for (role, content) in prompt.chat_messages() {
            match role {
                Role::System => system = Some(content),
                role => messages.push((role, content)),
            }
        }
        if messages.first().map(|(role, _)| *role) != Some(Role::User) {
            return Err(ModelError::SampleFatal(format!(
                "model {}: the Messages API needs the conversation to open with a user turn",
                self.name
            )));
        }
        if let Some(prefill) = prompt.prefill.as_deref().map(str::trim_end)
            && !prefill.is_empty()
        {
            match messages.last_mut() {
                Some((Role::Assistant, text)) => {
                    text.push_str("\n\n");
                    text.push_str(prefill);
                }
                _ => messages.push((Role::Assistant, prefill.to_owned())),
            }
        }
        let messages: Vec<Value> = messages
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            // Rounded so that 0.7f32 goes out as 0.7.
            "temperature": (f64::from(self.temperature) * 1e6).round() / 1e6,
            "messages": messages,
        });
        if let Some(system) = system {
            body["system"] = system.into();
        }
        Ok(body)
    }

    async fn send(&self, body: &Value) -> Result<Generation, ModelError> {
        let shown = redact(&self.endpoint);
        let mut request = self
            .client
            .post(&self.endpoint)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(body);
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        let transport = |error: reqwest::Error| {
            let error = error.without_url();
            let unreachable = error.is_connect();
            let what = if unreachable {
                "cannot connect to".to_owned()
            } else if error.is_timeout() {
                format!("no reply within {} s from", self.timeout.as_secs())
            } else {
                "the request failed to".to_owned()
            };
            ModelError::Retryable {
                message: self.scrub(format!("model {}: {what} {shown}: {error}", self.name)),
                retry_after: None,
                unreachable,
                overloaded: error.is_timeout() && !unreachable,
                attempts: 1,
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(self.status_error(status, wait, &text));
        }
        self.parse_reply(&text)
    }

    /// A reply with a non-success status: classified by the error's `type`, else its status.
    pub fn status_error(
        &self,
        status: StatusCode,
        wait: Option<Duration>,
        body: &str,
    ) -> ModelError {
        let name = &self.name;
        let code = status.as_u16();
        let kind = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|value| value.pointer("/error/type")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let server = self.scrub(server_message(body));
        let retryable = |overloaded: bool| ModelError::Retryable {
            message: format!("model {name}: HTTP {code} {kind} from the Messages API: {server}"),
            retry_after: wait.filter(|_| overloaded),
            unreachable: false,
            overloaded,
            attempts: 1,
        };
        match (kind.as_str(), code) {
            ("overloaded_error", _) | (_, 529) | ("rate_limit_error", _) | (_, 429) => {
                retryable(true)
            }
            ("api_error", _) | (_, 500..=599) => retryable(false),
            ("authentication_error" | "permission_error", _) | (_, 401 | 403) => {
                ModelError::JobFatal(match &self.api_key_env {
                    Some(var) => format!(
                        "model {name}: the Messages API refused the API key ({kind}, HTTP \
                         {code}); check the environment variable {var}"
                    ),
                    None => format!(
                        "model {name}: the Messages API refused the request ({kind}, HTTP \
                         {code}) and no API key is configured; set `api_key_env`"
                    ),
                })
            }
            ("not_found_error", _) | (_, 404) => ModelError::JobFatal(format!(
                "model {name}: the Messages API does not know the model {:?} (HTTP 404): \
                 {server}",
                self.model
            )),
            _ => ModelError::SampleFatal(format!(
                "model {name}: the Messages API rejected the request ({kind}, HTTP {code}): \
                 {server}"
            )),
        }
    }

    /// The generation in a 2xx body: its text blocks joined, and its usage.
    pub fn parse_reply(&self, body: &str) -> Result<Generation, ModelError> {
        let value: Value = serde_json::from_str(body).map_err(|e| ModelError::Retryable {
            message: format!("model {}: the reply is not complete JSON ({e})", self.name),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        })?;
        let Some(content) = value.get("content").and_then(Value::as_array) else {
            return Err(ModelError::SampleFatal(format!(
                "model {}: the reply has no `content`: {}",
                self.name,
                self.scrub(server_message(body))
            )));
        };
        let text: String = content
            .iter()
            .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect();
        let count = |field: &str| {
            value
                .pointer(&format!("/usage/{field}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Ok(Generation {
            text: text.trim().to_owned(),
            usage: CallUsage {
                tokens_in: count("input_tokens"),
                tokens_out: count("output_tokens"),
            },
        })
    }

    fn scrub(&self, message: String) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() => message.replace(key.as_str(), "[redacted]"),
            _ => message,
        }
    }
}

#[async_trait]
impl Model for AnthropicModel {
    async fn generate(&self, prompt: &Prompt, _seed: u64) -> Result<Generation, ModelError> {
        self.send(&self.body(prompt)?).await
    }

    /// The Messages API returns no log-probabilities; the job check refuses such a judge, so
    /// this is reached only by a spec that was not checked.
    async fn judge(&self, _prompt: &Prompt, _seed: u64) -> Result<Judgment, ModelError> {
        Err(ModelError::JobFatal(format!(
            "model {}: Anthropic's Messages API returns no log-probabilities: judge with \
             mode = \"verdict\"",
            self.name
        )))
    }

    /// The turns' text, as the API counts it.
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

    fn model(key: Option<&str>) -> AnthropicModel {
        let spec = AnthropicSpec {
            url: "http://127.0.0.1:9/v1/".into(),
            model: "claude-test".into(),
            api_key_env: None,
        };
        let sampling = Sampling {
            temperature: 0.7,
            max_tokens: 300,
            top_logprobs: 20,
        };
        let mut model =
            AnthropicModel::new("judge", &spec, &sampling, Duration::from_secs(5)).unwrap();
        model.api_key = key.map(str::to_owned);
        model.api_key_env = key.map(|_| "ANTHROPIC_API_KEY".to_owned());
        model
    }

    #[test]
    fn the_system_goes_on_top_the_roles_alternate_and_a_prefill_ends_the_messages() {
        let prompt = Prompt {
            turns: vec![
                Turn::new(Speaker::Human, "hi"),
                Turn::new(Speaker::System, "be brief"),
                Turn::new(Speaker::Text, "and kind"),
                Turn::new(Speaker::Assistant, "hello"),
                Turn::new(Speaker::Human, "which?"),
            ],
            reply_as: Some(Speaker::Assistant),
            prefill: Some(" Let's think: ".into()),
        };
        let body = model(None).body(&prompt).unwrap();
        assert_eq!(model(None).endpoint, "http://127.0.0.1:9/v1/messages");
        assert_eq!(
            body,
            json!({
                "model": "claude-test", "max_tokens": 300, "temperature": 0.7,
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": "hi\n\nand kind"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "which?"},
                    {"role": "assistant", "content": " Let's think:"},
                ],
            })
        );
        let opens_with_the_assistant = Prompt {
            turns: vec![Turn::new(Speaker::Assistant, "hello")],
            reply_as: None,
            prefill: None,
        };
        assert!(matches!(
            model(None).body(&opens_with_the_assistant),
            Err(ModelError::SampleFatal(_))
        ));
    }

    #[test]
    fn error_types_are_classified_and_no_key_reaches_a_message() {
        let model = model(Some("sk-ant-secret"));
        let body = |kind: &str| {
            format!(
                r#"{{"type": "error", "error": {{"type": "{kind}", "message": "no sk-ant-secret"}}}}"#
            )
        };
        let wait = Some(Duration::from_secs(7));
        let error = |code: u16, kind: &str| {
            model.status_error(StatusCode::from_u16(code).unwrap(), wait, &body(kind))
        };
        for (code, kind) in [(529, "overloaded_error"), (429, "rate_limit_error")] {
            let ModelError::Retryable {
                retry_after,
                overloaded,
                unreachable,
                ..
            } = error(code, kind)
            else {
                panic!("{kind} is retryable");
            };
            assert_eq!((retry_after, overloaded, unreachable), (wait, true, false));
        }
        assert!(matches!(
            error(500, "api_error"),
            ModelError::Retryable {
                overloaded: false,
                retry_after: None,
                ..
            }
        ));
        assert!(
            matches!(error(401, "authentication_error"), ModelError::JobFatal(m) if m.contains("ANTHROPIC_API_KEY"))
        );
        assert!(matches!(
            error(403, "permission_error"),
            ModelError::JobFatal(_)
        ));
        assert!(matches!(
            error(404, "not_found_error"),
            ModelError::JobFatal(_)
        ));
        assert!(matches!(
            error(400, "invalid_request_error"),
            ModelError::SampleFatal(_)
        ));
        assert!(matches!(
            error(413, "request_too_large"),
            ModelError::SampleFatal(_)
        ));
        for code in [400, 401, 404, 429, 500, 529] {
            assert!(
                !error(code, "api_error")
                    .to_string()
                    .contains("sk-ant-secret")
            );
        }
    }

    #[test]
    fn a_reply_is_its_text_blocks_and_its_usage() {
        let reply = r#"{"id": "msg_1", "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": " Feedback: fine. "}, {"type": "text", "text": "[RESULT] B"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 120, "output_tokens": 9}}"#;
        let generation = model(None).parse_reply(reply).unwrap();
        assert_eq!(generation.text, "Feedback: fine. [RESULT] B");
        assert_eq!(
            generation.usage,
            CallUsage {
                tokens_in: 120,
                tokens_out: 9
            }
        );
    }
}
