//! The model seam. A model does two things: generate a reply to a conversation, and judge (return
//! the top next-token log-probabilities at the first generated positions, from which the
//! pairwise pipeline reads the option probabilities).
//!
//! Prompts are built from [`Turn`]s with CAI speakers (Human, Assistant, CritiqueRequest, …) so that
//! a chat endpoint sees ordinary user/assistant messages while a completions endpoint sees the
//! paper's `"\n\nHuman: …\n\nCritiqueRequest: …\n\nCritique:"` transcript.

pub mod anthropic;
pub mod batch;
pub mod client;
pub mod concurrency;
pub mod key_policy;
pub mod letters;
pub mod limits;
pub mod local;
pub mod mock;
pub mod openai;
pub mod replicas;
pub mod verdicts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::{BackendSpec, ModelSpec};
use cai_common::message::Role;
use cai_common::state::StateStore;
use serde::{Deserialize, Serialize};

/// Who speaks a turn of a CAI prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Speaker {
    /// A system instruction.
    System,
    /// The human.
    Human,
    /// The assistant.
    Assistant,
    /// A request to critique the last answer.
    CritiqueRequest,
    /// The critique.
    Critique,
    /// A request to revise the last answer.
    RevisionRequest,
    /// The revision.
    Revision,
    /// Untagged text: a completions transcript shows it with no speaker label (the paper's
    /// feedback prompt for a pretrained model is plain text, not a dialogue); a chat endpoint
    /// sees it as a user message.
    Text,
}

impl Speaker {
    /// The chat role this speaker maps to on a chat endpoint.
    pub fn chat_role(self) -> Role {
        match self {
            Speaker::System => Role::System,
            Speaker::Human
            | Speaker::CritiqueRequest
            | Speaker::RevisionRequest
            | Speaker::Text => Role::User,
            Speaker::Assistant | Speaker::Critique | Speaker::Revision => Role::Assistant,
        }
    }

    /// The label this speaker has in a completions transcript (the paper's format).
    pub fn label(self) -> &'static str {
        match self {
            Speaker::System => "System",
            Speaker::Human => "Human",
            Speaker::Assistant => "Assistant",
            Speaker::CritiqueRequest => "CritiqueRequest",
            Speaker::Critique => "Critique",
            Speaker::RevisionRequest => "RevisionRequest",
            Speaker::Revision => "Revision",
            Speaker::Text => "",
        }
    }

    /// The speaker a chat message of `role` becomes.
    pub fn from_role(role: Role) -> Self {
        match role {
            Role::System => Speaker::System,
            Role::User => Speaker::Human,
            Role::Assistant => Speaker::Assistant,
        }
    }
}

/// One turn of a prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// Who speaks.
    pub speaker: Speaker,
    /// What is said.
    pub text: String,
}

impl Turn {
    /// A turn.
    pub fn new(speaker: Speaker, text: impl Into<String>) -> Self {
        Self {
            speaker,
            text: text.into(),
        }
    }
}

/// What a model is asked: the turns so far and who speaks next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// The conversation so far.
    pub turns: Vec<Turn>,
    /// Who the model speaks as. `None` continues the last turn's text directly (a completions
    /// endpoint sees no trailing label; a chat endpoint answers as the assistant).
    pub reply_as: Option<Speaker>,
    /// The start of the reply, already written, so that the next token is the one to read (a
    /// judge's ` (` before the letter). A completions transcript ends with it; a chat request
    /// carries it as the start of the assistant's message only where the model is set to
    /// continue one (`prefill = true`), and otherwise leaves it out.
    pub prefill: Option<String>,
}

impl Prompt {
    /// Renders the prompt as the paper's transcript, for completions endpoints and local models
    /// without a chat template: `"\n\nHuman: …\n\nAssistant:"`.
    pub fn transcript(&self) -> String {
        let mut text = String::new();
        for turn in &self.turns {
            if turn.speaker == Speaker::Text {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
            } else {
                text.push_str("\n\n");
                text.push_str(turn.speaker.label());
                text.push_str(": ");
            }
            text.push_str(&turn.text);
        }
        if let Some(speaker) = self.reply_as {
            text.push_str("\n\n");
            text.push_str(speaker.label());
            text.push(':');
        }
        if let Some(prefill) = &self.prefill {
            text.push_str(prefill);
        }
        text
    }

    /// The prompt as chat messages that strict chat templates accept: the system turns first
    /// (joined into one), then user and assistant strictly alternating, consecutive turns of
    /// one role joined by a blank line (Mistral's template and many others refuse two user
    /// turns in a row). A conversation that opens with an assistant turn keeps it first.
    pub fn chat_messages(&self) -> Vec<(Role, String)> {
        let join = |into: &mut String, text: &str| {
            if !into.is_empty() {
                into.push_str("\n\n");
            }
            into.push_str(text);
        };
        let mut system = String::new();
        let mut messages: Vec<(Role, String)> = Vec::new();
        for turn in &self.turns {
            match turn.speaker.chat_role() {
                Role::System => join(&mut system, &turn.text),
                role => match messages.last_mut() {
                    Some((last, text)) if *last == role => join(text, &turn.text),
                    _ => messages.push((role, turn.text.clone())),
                },
            }
        }
        if !system.is_empty() {
            messages.insert(0, (Role::System, system));
        }
        messages
    }

    /// Stop sequences for a transcript: any new speaker label ends the reply.
    pub fn transcript_stops() -> Vec<String> {
        ["Human", "Assistant", "CritiqueRequest", "RevisionRequest"]
            .iter()
            .map(|label| format!("\n\n{label}:"))
            .collect()
    }
}

/// Tokens of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallUsage {
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Generated tokens.
    pub tokens_out: u64,
}

/// A generated reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The reply text, trimmed of surrounding whitespace.
    pub text: String,
    /// Tokens used.
    pub usage: CallUsage,
}

/// One candidate token at a generated position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
}

/// The top next-token log-probabilities at the first generated positions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    /// Per generated position (in order), the top tokens with their log-probabilities.
    pub positions: Vec<Vec<TokenLogprob>>,
    /// The text the model actually generated, for the trace.
    pub text: String,
    /// Tokens used.
    pub usage: CallUsage,
}

/// Why a model call failed, named for what the caller must do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// Transient (429, 5xx, timeout, connection, a truncated or non-JSON body): retry after a while.
    /// At most one of `unreachable` and `overloaded` is set; neither for the other transient
    /// failures (a 500, a cut-off reply), which say nothing about load.
    #[error("{message}")]
    Retryable {
        /// What happened (no secrets).
        message: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// Whether the endpoint could not be reached at all (connection refused, DNS).
        unreachable: bool,
        /// Whether the server is overloaded: it said so (429, 503) or gave no reply in time. An
        /// adaptive concurrency limit ([`concurrency`]) cuts on it.
        overloaded: bool,
        /// Attempts made: 1 from a backend, the total once the client layer gives up.
        attempts: u32,
    },
    /// This sample cannot be done (context too long, unreadable judgment): record it as failed.
    #[error("{0}")]
    SampleFatal(String),
    /// Nothing will work (bad key, unknown model): stop the job.
    #[error("{0}")]
    JobFatal(String),
}

/// A language model.
#[async_trait]
pub trait Model: Send + Sync {
    /// Generates a reply. `seed` is passed to backends that take a sampling seed.
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError>;
    /// Returns the top next-token log-probabilities at the first few generated positions.
    async fn judge(&self, prompt: &Prompt, seed: u64) -> Result<Judgment, ModelError>;
    /// Writes a judge's verdict, sampled with `seed` (verdict mode's votes). A verdict is a
    /// generation; the mock overrides it to write a vote its parsers read.
    async fn verdict(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        self.generate(prompt, seed).await
    }
    /// The prompt tokens of a request estimated from its text, a token per four characters
    /// (rounded up), for the `tpm` limit before the server has counted them.
    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        (prompt.transcript().chars().count() as u64).div_ceil(4)
    }
    /// Gives the model the job it serves and the job's state store, for a backend that keeps
    /// durable state of its own there (batch mode records its batches); others ignore it.
    fn bind(&self, _job: &str, _state: &Arc<dyn StateStore>) {}
}

/// The models of a job, by the name the job file gives them.
#[derive(Clone, Default)]
pub struct Models {
    models: BTreeMap<String, Arc<dyn Model>>,
}

/// Where a model's calls go, for spans: the server URLs without secrets (comma-separated when
/// the model has replicas), or the backend and the model file.
pub fn endpoint(spec: &ModelSpec) -> String {
    match &spec.backend {
        BackendSpec::Openai(openai) => openai
            .urls
            .iter()
            .map(|url| openai::redact(url))
            .collect::<Vec<_>>()
            .join(", "),
        BackendSpec::Mock(_) => "mock".into(),
        BackendSpec::Local(local) => format!("local:{}", local.path.display()),
        BackendSpec::Anthropic(anthropic) => openai::redact(&anthropic.url),
    }
}

/// Builds model `name` of a job: its backend, behind the client layer of its spec
/// ([`client::Governed`]), or in batch mode the batch backend, which is its own client layer
/// ([`batch::BatchModel`], to be bound to its job with [`Model::bind`]). Fails (job-fatal) on a
/// missing API key variable or model file.
pub fn build(name: &str, spec: &ModelSpec) -> Result<Arc<dyn Model>, ModelError> {
    if spec.batch().is_some() {
        return Ok(Arc::new(batch::BatchModel::new(name, spec)?));
    }
    let backend: Arc<dyn Model> = match &spec.backend {
        BackendSpec::Mock(mock) => Arc::new(mock::MockModel::new(
            name,
            mock,
            spec.policy.max_concurrency.most_in_flight(),
        )),
        BackendSpec::Openai(openai) => Arc::new(openai::OpenAiModel::new(
            name,
            openai,
            &spec.sampling,
            Duration::from_secs(spec.policy.timeout_s),
        )?),
        BackendSpec::Local(local) => Arc::new(local::LocalModel::new(name, local, &spec.sampling)?),
        BackendSpec::Anthropic(anthropic) => Arc::new(anthropic::AnthropicModel::new(
            name,
            anthropic,
            &spec.sampling,
            Duration::from_secs(spec.policy.timeout_s),
        )?),
    };
    Ok(Arc::new(client::Governed::new(name, spec, backend)))
}

impl Models {
    /// Builds every model of a job ([`build`]).
    pub fn build(specs: &BTreeMap<String, ModelSpec>) -> Result<Self, ModelError> {
        let mut models: BTreeMap<String, Arc<dyn Model>> = BTreeMap::new();
        for (name, spec) in specs {
            models.insert(name.clone(), build(name, spec)?);
        }
        Ok(Self { models })
    }

    /// Builds every model of a job as [`Models::build`] does, once `keys` allows each API-key
    /// variable the models name for every host they would send it to: a refused variable is
    /// never read.
    pub fn build_allowed(
        specs: &BTreeMap<String, ModelSpec>,
        keys: &key_policy::KeyPolicy,
    ) -> Result<Self, ModelError> {
        keys.check(specs)?;
        Self::build(specs)
    }

    /// What the job's models would need on this machine that is not here, without loading a
    /// weight or reading a key: a local model's file, an API-key variable. The coordinator of a
    /// distributed job and `cai validate` report these and go on, because only workers build
    /// models (a coordinator pod needs neither the weights nor the key); an embedded run builds
    /// the models and fails on them instead.
    pub fn preflight(specs: &BTreeMap<String, ModelSpec>) -> Vec<String> {
        let mut notes = Vec::new();
        for (name, spec) in specs {
            match &spec.backend {
                BackendSpec::Local(local) => {
                    if !local.path.is_file() {
                        notes.push(format!(
                            "model {name:?}: {} is not on this machine; the workers that run the job need it",
                            local.path.display()
                        ));
                    }
                }
                BackendSpec::Openai(_) | BackendSpec::Anthropic(_) => {
                    let unset = |var: &String| std::env::var_os(var).is_none_or(|v| v.is_empty());
                    if let Some(var) = spec.api_key_env().filter(|var| unset(var)) {
                        notes.push(format!(
                            "model {name:?}: ${var} is not set here; the workers that run the job need it"
                        ));
                    }
                }
                BackendSpec::Mock(_) => {}
            }
        }
        notes
    }

    /// Binds every model to the job it serves and the job's state store ([`Model::bind`]).
    pub fn bind(&self, job: &str, state: &Arc<dyn StateStore>) {
        for model in self.models.values() {
            model.bind(job, state);
        }
    }

    /// Adds or replaces a model (tests, embedding callers).
    pub fn insert(&mut self, name: &str, model: Arc<dyn Model>) {
        self.models.insert(name.to_owned(), model);
    }

    /// The model of that name. Every name a checked spec uses is one of its models, so a
    /// miss means models built for another spec were given: the job cannot run (job-fatal).
    pub fn get(&self, name: &str) -> Result<Arc<dyn Model>, ModelError> {
        self.models.get(name).cloned().ok_or_else(|| {
            ModelError::JobFatal(format!(
                "model {name:?} is not among the models built for this job"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_uses_the_paper_labels() {
        let prompt = Prompt {
            turns: vec![
                Turn::new(Speaker::Human, "hi"),
                Turn::new(Speaker::Assistant, "hello"),
                Turn::new(Speaker::CritiqueRequest, "critique it"),
            ],
            reply_as: Some(Speaker::Critique),
            prefill: None,
        };
        assert_eq!(
            prompt.transcript(),
            "\n\nHuman: hi\n\nAssistant: hello\n\nCritiqueRequest: critique it\n\nCritique:"
        );
    }
}
