//! The local backend (`backend = "local"`): a GGUF model run in-process on the CPU with candle,
//! so a worker needs no model server.
//!
//! Everything comes from the one file: the weights (quantized llama family or gemma3, by
//! `general.architecture`), the tokenizer (`tokenizer.ggml.*`) and the chat template
//! (`tokenizer.chat_template`; a model without one is prompted with the paper's transcript and
//! stopped at the next speaker label).
//!
//! Generation samples with the call's seed (greedy at temperature 0) until an end-of-turn
//! token or `max_tokens`; a judgment continues greedily (the seed is unused) for up to three
//! positions and reports the top `top_logprobs` tokens at each.
//!
//! A file is loaded once per process and shared by every model name that points at it. Calls
//! run on tokio's blocking pool one at a time per process: candle already spreads one call
//! over every core, so parallel calls would only contend, and each call runs on its own
//! clone of the weights (reference-counted tensors) with a fresh KV cache.
//!
//! Threads: candle sizes its CPU pools once per process from the environment
//! (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the physical cores), and setting an
//! environment variable from inside the process needs `unsafe`, which this workspace forbids.
//! So a model's `threads` is checked against the pool candle built, and a mismatch is logged
//! with the variable to set.

mod meta;
mod sampling;
mod template;
mod tokenizer;
mod weights;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use async_trait::async_trait;
use cai_common::job::{LocalSpec, Sampling};
use candle_core::quantized::gguf_file;
use tokio::sync::Semaphore;

use super::{CallUsage, Generation, Judgment, Model, ModelError, Prompt, TokenLogprob};
use sampling::Sampler;
use template::ChatTemplate;
use tokenizer::Tokenizer;
use weights::Weights;

/// Generated positions whose top log-probabilities a judgment reports.
const JUDGE_POSITIONS: usize = 3;

/// Loaded files by canonical path; an entry lives while some model uses it.
static ENGINES: Mutex<BTreeMap<PathBuf, Weak<Engine>>> = Mutex::new(BTreeMap::new());

/// One inference at a time per process.
static CPU: Semaphore = Semaphore::const_new(1);

/// A GGUF model run in-process.
pub struct LocalModel {
    name: String,
    engine: Arc<Engine>,
    temperature: f64,
    max_tokens: usize,
    top_logprobs: usize,
}

/// What a loaded file provides.
struct Engine {
    weights: Weights,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Most positions (prompt and reply) a call may use.
    context: usize,
}

/// A GGUF file's tokenizer alone, read from its metadata without its weights: what `cai
/// validate` counts a local model's tokens with.
pub struct TokenCounter(Tokenizer);

impl TokenCounter {
    /// Reads the tokenizer of the GGUF file at `path` (its header only).
    pub fn open(path: &Path) -> Result<Self, String> {
        let mut reader = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
        let content =
            gguf_file::Content::read(&mut reader).map_err(|e| format!("not a GGUF file: {e}"))?;
        Ok(Self(Tokenizer::from_metadata(&content.metadata)?))
    }

    /// The tokens of a text.
    pub fn count(&self, text: &str) -> u64 {
        self.0.encode(text).len() as u64
    }
}

impl LocalModel {
    /// Loads the model's GGUF file (`spec.path`), or shares it if this process already has.
    /// Blocks while reading the file. Fails job-fatally on a missing, unreadable or
    /// unsupported file.
    pub fn new(name: &str, spec: &LocalSpec, sampling: &Sampling) -> Result<Self, ModelError> {
        let path = spec.path.as_path();
        let engine = Engine::shared(path).map_err(|message| {
            ModelError::JobFatal(format!("model {name:?}: {}: {message}", path.display()))
        })?;
        if let Some(wanted) = spec.threads {
            let pool = candle_core::utils::barrier_pool().n_workers() + 1;
            if wanted != pool {
                tracing::warn!(
                    model = name,
                    threads = wanted,
                    pool,
                    "candle's thread pool is sized per process: set CANDLE_NUM_THREADS={wanted} \
                     in the worker's environment to use {wanted} threads"
                );
            }
        }
        Ok(Self {
            name: name.to_owned(),
            engine,
            temperature: f64::from(sampling.temperature),
            max_tokens: sampling.max_tokens as usize,
            top_logprobs: sampling.top_logprobs as usize,
        })
    }

    /// Runs `work` on the blocking pool once this process's inference slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Engine) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ModelError> {
        let permit = CPU
            .acquire()
            .await
            .expect("the inference semaphore is never closed");
        let engine = Arc::clone(&self.engine);
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&engine)
        })
        .await;
        match done {
            Ok(result) => result.map_err(|message| {
                ModelError::SampleFatal(format!("model {:?}: {message}", self.name))
            }),
            Err(error) => Err(ModelError::SampleFatal(format!(
                "model {:?}: inference failed: {error}",
                self.name
            ))),
        }
    }
}

#[async_trait]
impl Model for LocalModel {
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        let (prompt, temperature, max_tokens) = (prompt.clone(), self.temperature, self.max_tokens);
        self.run(move |engine| {
            engine.generate(&prompt, Sampler::new(temperature, seed), max_tokens)
        })
        .await
    }

    async fn judge(&self, prompt: &Prompt, _seed: u64) -> Result<Judgment, ModelError> {
        let (prompt, top, max_tokens) = (prompt.clone(), self.top_logprobs, self.max_tokens);
        self.run(move |engine| engine.judge(&prompt, top, JUDGE_POSITIONS.min(max_tokens)))
            .await
    }
}

impl Engine {
    /// The engine of the file at `path`, loading it unless this process holds it already.
    fn shared(path: &Path) -> Result<Arc<Self>, String> {
        let key = path.canonicalize().map_err(|e| e.to_string())?;
        let mut engines = ENGINES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(engine) = engines.get(&key).and_then(Weak::upgrade) {
            return Ok(engine);
        }
        let engine = Arc::new(Self::load(&key)?);
        engines.retain(|_, engine| engine.strong_count() > 0);
        engines.insert(key, Arc::downgrade(&engine));
        Ok(engine)
    }

    fn load(path: &Path) -> Result<Self, String> {
        let started = Instant::now();
        let mut reader = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
        let content =
            gguf_file::Content::read(&mut reader).map_err(|e| format!("not a GGUF file: {e}"))?;
        let metadata = &content.metadata;
        let architecture = meta::string(metadata, "general.architecture")
            .ok_or("GGUF metadata has no `general.architecture`")?
            .to_owned();
        let tokenizer = Tokenizer::from_metadata(metadata)?;
        let template = meta::string(metadata, "tokenizer.chat_template")
            .map(|source| ChatTemplate::new(source, tokenizer.bos_text(), tokenizer.eos_text()))
            .transpose()?;
        let trained = meta::int(metadata, &format!("{architecture}.context_length"))
            .and_then(|n| usize::try_from(n).ok());
        let weights = Weights::load(&architecture, content, &mut reader)?;
        let context = trained.map_or(weights.max_positions(), |n| n.min(weights.max_positions()));
        tracing::info!(
            file = %path.display(),
            architecture,
            context,
            chat_template = template.is_some(),
            seconds = started.elapsed().as_secs_f64(),
            "loaded local model"
        );
        Ok(Self {
            weights,
            tokenizer,
            template,
            context,
        })
    }

    /// The prompt's token ids, and the texts that end a reply besides end-of-turn tokens.
    fn encode(&self, prompt: &Prompt) -> Result<(Vec<u32>, Vec<String>), String> {
        match &self.template {
            Some(template) => {
                let messages = chat_messages(prompt);
                let messages: Vec<(&str, &str)> =
                    messages.iter().map(|(r, c)| (*r, c.as_str())).collect();
                let mut text = template.render(&messages)?;
                // In-process, the assistant's reply can always be started for it.
                if let Some(prefill) = &prompt.prefill {
                    text.push_str(prefill);
                }
                Ok((self.tokenizer.encode_prompt(&text), Vec::new()))
            }
            None => Ok((
                self.tokenizer.encode_prompt(&prompt.transcript()),
                Prompt::transcript_stops(),
            )),
        }
    }

    /// How many tokens a reply to a prompt of `prompt_len` tokens may have, at most `wanted`.
    fn budget(&self, prompt_len: usize, wanted: usize) -> Result<usize, String> {
        if prompt_len >= self.context {
            return Err(format!(
                "prompt of {prompt_len} tokens leaves no room in the context of {} tokens",
                self.context
            ));
        }
        Ok(wanted.min(self.context - prompt_len))
    }

    fn generate(
        &self,
        prompt: &Prompt,
        mut sampler: Sampler,
        max_tokens: usize,
    ) -> Result<Generation, String> {
        let (ids, stops) = self.encode(prompt)?;
        let budget = self.budget(ids.len(), max_tokens)?;
        let started = Instant::now();
        let mut weights = self.weights.clone();
        let mut logits = weights.forward(&ids, 0).map_err(|e| e.to_string())?;
        let prefilled = Instant::now();
        let mut reply = Vec::new();
        let mut cut = None;
        loop {
            let next = sampler.next(&logits);
            if self.tokenizer.is_stop(next) {
                break;
            }
            reply.push(next);
            if !stops.is_empty() {
                let text = self.tokenizer.decode(&reply);
                cut = stops
                    .iter()
                    .filter_map(|stop| text.find(stop.as_str()))
                    .min();
            }
            if cut.is_some() || reply.len() >= budget {
                break;
            }
            logits = weights
                .forward(&[next], ids.len() + reply.len() - 1)
                .map_err(|e| e.to_string())?;
        }
        log_speed(ids.len(), reply.len(), started, prefilled);
        let mut text = self.tokenizer.decode(&reply);
        if let Some(cut) = cut {
            text.truncate(cut);
        }
        Ok(Generation {
            text: text.trim().to_owned(),
            usage: usage(ids.len(), reply.len()),
        })
    }

    fn judge(&self, prompt: &Prompt, top: usize, positions: usize) -> Result<Judgment, String> {
        let (ids, _) = self.encode(prompt)?;
        let positions = self.budget(ids.len(), positions)?;
        let started = Instant::now();
        let mut weights = self.weights.clone();
        let mut logits = weights.forward(&ids, 0).map_err(|e| e.to_string())?;
        let prefilled = Instant::now();
        let mut judgment = Vec::with_capacity(positions);
        let mut reply = Vec::new();
        for step in 0..positions {
            let candidates = sampling::top_logprobs(&logits, top);
            judgment.push(
                candidates
                    .iter()
                    .map(|&(id, logprob)| TokenLogprob {
                        token: self.tokenizer.token_text(id),
                        logprob,
                    })
                    .collect(),
            );
            let Some(&(next, _)) = candidates.first() else {
                break;
            };
            if self.tokenizer.is_stop(next) {
                break;
            }
            reply.push(next);
            if step + 1 < positions {
                logits = weights
                    .forward(&[next], ids.len() + step)
                    .map_err(|e| e.to_string())?;
            }
        }
        log_speed(ids.len(), reply.len(), started, prefilled);
        Ok(Judgment {
            positions: judgment,
            text: self.tokenizer.decode(&reply),
            usage: usage(ids.len(), reply.len()),
        })
    }
}

/// The prompt as the template's (role, content) pairs, alternating as strict templates need.
fn chat_messages(prompt: &Prompt) -> Vec<(&'static str, String)> {
    prompt
        .chat_messages()
        .into_iter()
        .map(|(role, content)| (role.as_str(), content))
        .collect()
}

fn usage(prompt: usize, reply: usize) -> CallUsage {
    CallUsage {
        tokens_in: prompt as u64,
        tokens_out: reply as u64,
    }
}

/// Logs a call's prompt and generation throughput.
fn log_speed(prompt: usize, reply: usize, started: Instant, prefilled: Instant) {
    let prefill = prefilled.duration_since(started).as_secs_f64();
    let decode = prefilled.elapsed().as_secs_f64();
    tracing::debug!(
        prompt_tokens = prompt,
        prompt_tokens_per_s = prompt as f64 / prefill.max(1e-9),
        generated_tokens = reply,
        generated_tokens_per_s = reply as f64 / decode.max(1e-9),
        "local inference"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Speaker, Turn};

    /// The test model's metadata, or `None` (saying so) when `CAI_TEST_MODEL` is unset.
    fn test_model_metadata() -> Option<meta::Metadata> {
        let Some(path) = std::env::var_os("CAI_TEST_MODEL") else {
            eprintln!(
                "skipped: CAI_TEST_MODEL is unset (scripts/fetch-model.sh fetches the model)"
            );
            return None;
        };
        let mut reader =
            BufReader::new(File::open(path).expect("CAI_TEST_MODEL names a readable file"));
        Some(
            gguf_file::Content::read(&mut reader)
                .expect("a GGUF file")
                .metadata,
        )
    }

    #[test]
    fn test_model_tokenizer_round_trips_chat_markup_unicode_and_whitespace() {
        let Some(metadata) = test_model_metadata() else {
            return;
        };
        let tokenizer = Tokenizer::from_metadata(&metadata).unwrap();
        assert_eq!(tokenizer.encode("<|im_start|>").len(), 1);
        assert_eq!(tokenizer.encode("Hello world").len(), 2);
        let markup = tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n");
        assert_eq!(tokenizer.token_text(markup[0]), "<|im_start|>");
        assert!(
            tokenizer.is_stop(markup[markup.len() - 2]),
            "<|im_end|> ends a turn"
        );
        for text in [
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
            "naïve café — 東京 🙂 Ωμέγα ⅷ",
            "  leading\ttabs\n\n\n  and   runs   \r\n",
            "x<|im_end|><|im_end|>y<|im_start",
            "12345 3.14 don't I'll (A) (B)",
            "",
        ] {
            assert_eq!(tokenizer.decode(&tokenizer.encode(text)), text, "{text:?}");
        }
    }

    #[test]
    fn test_model_chat_template_renders_chatml() {
        let Some(metadata) = test_model_metadata() else {
            return;
        };
        let tokenizer = Tokenizer::from_metadata(&metadata).unwrap();
        let source = meta::string(&metadata, "tokenizer.chat_template").unwrap();
        let template =
            ChatTemplate::new(source, tokenizer.bos_text(), tokenizer.eos_text()).unwrap();
        let text = template
            .render(&[("user", "Hi"), ("assistant", "Hello!")])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn turns_map_to_roles_and_same_role_turns_merge() {
        let prompt = Prompt {
            turns: vec![
                Turn::new(Speaker::System, "be brief"),
                Turn::new(Speaker::Human, "hi"),
                Turn::new(Speaker::Assistant, "hello"),
                Turn::new(Speaker::CritiqueRequest, "critique it"),
                Turn::new(Speaker::Human, "really"),
            ],
            reply_as: Some(Speaker::Critique),
            prefill: None,
        };
        let messages = chat_messages(&prompt);
        assert_eq!(
            messages,
            vec![
                ("system", "be brief".to_owned()),
                ("user", "hi".to_owned()),
                ("assistant", "hello".to_owned()),
                ("user", "critique it\n\nreally".to_owned()),
            ]
        );
    }
}
