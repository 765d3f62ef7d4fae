//! The CAI pipelines, run one sample at a time, depth-first: a sample's whole chain runs
//! before its task finishes, so samples complete steadily from the start.
//!
//! Every model call is a named step (`initial`, `critique-2`, `judge-1-yx`, …). A step's result
//! is kept in the step cache until the sample is done, so a sample redelivered after a crash
//! resumes at the step where it stopped and never pays twice for a finished call.

pub mod critique_revise;
pub mod dialogue;
pub mod pairwise;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cai_common::constitution::{Constitution, Principle};
use cai_common::job::{JobSpec, Pipeline};
use cai_common::message::Message;
use cai_common::result::{Outcome, SampleResult, TraceStep, Usage};
use cai_common::sample::Sample;
use cai_common::seed;
use cai_common::service_error::through_outage;
use cai_common::state::{StateError, StateStore};
use cai_common::telemetry::metrics::{CallOutcome, JobMetrics, metrics};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::model::{Generation, Judgment, Model, ModelError, Models, Prompt, Speaker, Turn};

/// Everything a worker needs to run samples of one job.
pub struct JobContext {
    /// The job spec (workers learn it from the coordinator or Redis).
    pub spec: Arc<JobSpec>,
    /// The constitution.
    pub constitution: Arc<Constitution>,
    /// The job's models.
    pub models: Models,
    /// Done set, step cache and batch records.
    pub state: Arc<dyn StateStore>,
    /// The job's metric series in this process.
    pub metrics: JobMetrics,
}

/// The job cannot go on (bad API key, unknown model, state store gone); the message says why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobFatal(pub String);

/// Why a sample stopped without an outcome: neither done nor failed.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    /// Stop the job.
    #[error(transparent)]
    Fatal(#[from] JobFatal),
    /// A model endpoint or the state store cannot be reached: an outage, not the sample's
    /// fault. The sample is run again later; the steps it finished are in the step cache.
    #[error("unreachable: {0}")]
    Outage(String),
    /// The sample was committed by another run of it meanwhile: nothing more to do.
    #[error("the sample is already done")]
    AlreadyDone,
}

impl From<StateError> for Interrupted {
    /// A state store that is away is an outage (the task waits for it); any other failure of
    /// it stops the job.
    fn from(error: StateError) -> Self {
        if error.is_unavailable() {
            Interrupted::Outage(error.to_string())
        } else {
            Interrupted::Fatal(JobFatal(error.to_string()))
        }
    }
}

/// How long a worker holds a paid step's result while the state store is away before it gives
/// the sample up (to be run again, paying again): long enough for a restart or a failover.
const STEP_WRITE_PATIENCE: Duration = Duration::from_secs(300);

/// Why a step did not produce a value.
enum StepError {
    /// The sample cannot be completed: record it as failed.
    Sample { reason: String, attempts: u32 },
    /// The model's endpoint is down.
    Outage(String),
    /// Another run of the sample was committed meanwhile.
    AlreadyDone,
    /// Stop the job.
    Job(String),
}

impl From<StateError> for StepError {
    fn from(error: StateError) -> Self {
        if error.is_unavailable() {
            StepError::Outage(error.to_string())
        } else {
            StepError::Job(error.to_string())
        }
    }
}

impl JobContext {
    /// The context of a job, with its metric series created.
    pub fn new(
        spec: Arc<JobSpec>,
        constitution: Arc<Constitution>,
        models: Models,
        state: Arc<dyn StateStore>,
    ) -> Self {
        let metrics = metrics().job(&spec.name, spec.models.keys().map(String::as_str));
        models.bind(&spec.name, &state);
        Self {
            spec,
            constitution,
            models,
            state,
            metrics,
        }
    }

    /// Runs one sample to its end: done with rows, or failed with a reason; or interrupted by a
    /// job-fatal error or an endpoint outage.
    pub async fn run_sample(&self, sample: &Sample) -> Result<SampleResult, Interrupted> {
        let mut run = SampleRun {
            ctx: self,
            sample,
            steps: Vec::new(),
            usage: Usage::default(),
            reused: Usage::default(),
        };
        let outcome = match &self.spec.pipeline {
            Pipeline::CritiqueRevise(spec) => critique_revise::run(&mut run, spec).await,
            Pipeline::Pairwise(spec) => pairwise::run(&mut run, spec).await,
            Pipeline::Dialogue(spec) => dialogue::run(&mut run, spec).await,
        };
        let outcome = match outcome {
            Ok(output) => Outcome::Done { output },
            Err(StepError::Sample { reason, attempts }) => Outcome::Failed { reason, attempts },
            Err(StepError::Job(message)) => return Err(JobFatal(message).into()),
            Err(StepError::Outage(message)) => return Err(Interrupted::Outage(message)),
            Err(StepError::AlreadyDone) => return Err(Interrupted::AlreadyDone),
        };
        Ok(SampleResult {
            key: sample.key,
            id: sample.id.clone(),
            outcome,
            steps: run.steps,
            usage: run.usage,
            reused: run.reused,
        })
    }
}

/// The running state of one sample: its trace and usage so far.
struct SampleRun<'a> {
    ctx: &'a JobContext,
    sample: &'a Sample,
    steps: Vec<TraceStep>,
    usage: Usage,
    /// What the steps found in the step cache cost the run that paid for them.
    reused: Usage,
}

/// What a step records in the trace besides the model's output.
struct StepInfo<'a> {
    name: String,
    model: &'a str,
    principle: Option<&'a Principle>,
    request: &'a str,
}

impl SampleRun<'_> {
    /// Draws a principle (uniformly, with replacement) for a named decision of this sample, from
    /// the job's pipeline's set: critique principles or judge principles (the plan checks that it
    /// is not empty).
    fn draw_principle(&self, decision: &str) -> &Principle {
        let principles = if self.ctx.spec.kind().critiques() {
            self.ctx.constitution.critique_principles()
        } else {
            self.ctx.constitution.judge_principles()
        };
        let mut rng = seed::rng_for(self.ctx.spec.seed, &self.sample.key, decision);
        principles[rng.random_range(0..principles.len())]
    }

    /// A fair coin for a named decision of this sample.
    fn flip(&self, decision: &str) -> bool {
        seed::rng_for(self.ctx.spec.seed, &self.sample.key, decision).random_bool(0.5)
    }

    /// The model a step calls and the step's sampling seed (unique per sample and step).
    fn model_for(&self, info: &StepInfo<'_>) -> Result<(Arc<dyn Model>, u64), StepError> {
        let model = self
            .ctx
            .models
            .get(info.model)
            .map_err(|error| StepError::Job(error.to_string()))?;
        let seed = seed::call_seed(self.ctx.spec.seed, &self.sample.key, &info.name);
        Ok((model, seed))
    }

    async fn generate(&mut self, info: StepInfo<'_>, prompt: &Prompt) -> Result<String, StepError> {
        let (model, seed) = self.model_for(&info)?;
        let generation: Generation = self
            .cached_call(
                &info,
                |generation: &Generation| generation.text.clone(),
                || async { model.generate(prompt, seed).await },
            )
            .await?;
        Ok(generation.text)
    }

    /// One verdict of verdict mode: a generation through the judge's `verdict`, traced as
    /// `describe` says (the vote read and the text).
    async fn vote(
        &mut self,
        info: StepInfo<'_>,
        prompt: &Prompt,
        describe: impl Fn(&Generation) -> String,
    ) -> Result<String, StepError> {
        let (model, seed) = self.model_for(&info)?;
        let generation: Generation = self
            .cached_call(&info, describe, || async {
                model.verdict(prompt, seed).await
            })
            .await?;
        Ok(generation.text)
    }

    async fn judge(
        &mut self,
        info: StepInfo<'_>,
        prompt: &Prompt,
        describe: impl Fn(&Judgment) -> String,
    ) -> Result<Judgment, StepError> {
        let (model, seed) = self.model_for(&info)?;
        self.cached_call(&info, describe, || async {
            model.judge(prompt, seed).await
        })
        .await
    }

    /// Runs a model call through the step cache and records it in the trace, in a `model_call`
    /// span and in the metrics.
    async fn cached_call<T, F, Fut>(
        &mut self,
        info: &StepInfo<'_>,
        describe: impl Fn(&T) -> String,
        call: F,
    ) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned + HasUsage,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ModelError>>,
    {
        let job = self.ctx.spec.name.as_str();
        let spec = &self.ctx.spec.models[info.model];
        let span = tracing::debug_span!(
            "model_call",
            job,
            model = info.model,
            step = %info.name,
            endpoint = %crate::model::endpoint(spec),
            cached = tracing::field::Empty,
            attempts = tracing::field::Empty,
            tokens_in = tracing::field::Empty,
            tokens_out = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let called = self
            .call_through_cache(info, call)
            .instrument(span.clone())
            .await;
        let latency = started.elapsed();
        let outcome = match &called {
            Ok((_, true)) => CallOutcome::Cached,
            Ok((_, false)) => CallOutcome::Ok,
            Err(StepError::Sample { .. }) => CallOutcome::Failed,
            Err(StepError::Outage(_)) => CallOutcome::Unreachable,
            Err(StepError::Job(_)) => CallOutcome::Fatal,
            Err(StepError::AlreadyDone) => return Err(StepError::AlreadyDone),
        };
        let usage = match &called {
            Ok((value, false)) => value.usage(),
            _ => crate::model::CallUsage::default(),
        };
        let reached_model = !matches!(outcome, CallOutcome::Cached);
        span.record("outcome", outcome.as_str());
        span.record("cached", !reached_model);
        span.record("tokens_in", usage.tokens_in);
        span.record("tokens_out", usage.tokens_out);
        span.record("latency_ms", latency.as_millis() as u64);
        self.ctx.metrics.record_call(
            info.model,
            outcome,
            reached_model.then_some(latency),
            (usage.tokens_in, usage.tokens_out),
        );
        let (value, was_cached) = called?;
        let traced = value.usage();
        let cost =
            |price: Option<f64>, tokens: u64| (price.unwrap_or(0.0) * tokens as f64).round() as u64;
        // A cached step was paid by an earlier run of this sample: counted as reused, so the
        // job's totals hold every call paid for the output once.
        let account = if was_cached {
            &mut self.reused
        } else {
            &mut self.usage
        };
        // A model in batch mode makes every call as a batch line, at the batch price.
        let prices = spec.prices();
        account.tokens_in += traced.tokens_in;
        account.tokens_out += traced.tokens_out;
        account.calls += 1;
        account.batch_calls += u64::from(prices.batch);
        account.cost_micro_usd +=
            cost(prices.price_in, traced.tokens_in) + cost(prices.price_out, traced.tokens_out);
        self.steps.push(TraceStep {
            step: info.name.clone(),
            principle_id: info.principle.map(|p| p.id.clone()),
            request: info.request.to_owned(),
            output: describe(&value),
            model: info.model.to_owned(),
            tokens_in: traced.tokens_in,
            tokens_out: traced.tokens_out,
            latency_ms: if was_cached {
                0
            } else {
                latency.as_millis() as u64
            },
            cached: was_cached,
            top_logprobs: value.top_logprobs(),
        });
        Ok(value)
    }

    /// The step's value from the step cache, or from the model (then cached); with whether it
    /// came from the cache.
    async fn call_through_cache<T, F, Fut>(
        &self,
        info: &StepInfo<'_>,
        call: F,
    ) -> Result<(T, bool), StepError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ModelError>>,
    {
        let state = &self.ctx.state;
        let job = &self.ctx.spec.name;
        let key = &self.sample.key;
        let cached = state
            .step_get(job, key, &info.name)
            .await?
            .and_then(|bytes| rmp_serde::from_slice::<T>(&bytes).ok());
        if let Some(value) = cached {
            return Ok((value, true));
        }
        // The collector marks a sample done before it forgets its steps, so a miss can mean
        // another run of this sample was just committed: check before paying.
        let done = state.done(job, &[*key]).await?;
        if done[0] {
            return Err(StepError::AlreadyDone);
        }
        let value = call().await.map_err(|error| self.step_error(info, error))?;
        let bytes = rmp_serde::to_vec_named(&value).expect("step values encode");
        // The call is paid for: wait out a state store that is away rather than lose it.
        through_outage("caching a step", Some(STEP_WRITE_PATIENCE), || {
            state.step_put(job, key, &info.name, bytes.clone())
        })
        .await?;
        Ok((value, false))
    }

    fn step_error(&self, info: &StepInfo<'_>, error: ModelError) -> StepError {
        match error {
            ModelError::JobFatal(message) => StepError::Job(message),
            ModelError::SampleFatal(message) => StepError::Sample {
                reason: format!("step {}: {message}", info.name),
                attempts: 1,
            },
            ModelError::Retryable {
                message,
                unreachable: true,
                ..
            } => StepError::Outage(format!("step {}: {message}", info.name)),
            ModelError::Retryable {
                message, attempts, ..
            } => StepError::Sample {
                reason: format!(
                    "step {}: gave up after {attempts} attempts: {message}",
                    info.name
                ),
                attempts,
            },
        }
    }
}

/// A conversation as prompt turns, each message under its role's speaker.
fn conversation_turns(messages: &[Message]) -> Vec<Turn> {
    messages
        .iter()
        .map(|m| Turn::new(Speaker::from_role(m.role), m.content.clone()))
        .collect()
}

/// What the trace and the usage need from a cached call's value.
trait HasUsage {
    fn usage(&self) -> crate::model::CallUsage;
    /// The raw top log-probabilities of a judgment, kept in the trace.
    fn top_logprobs(&self) -> Option<Vec<Vec<(String, f64)>>> {
        None
    }
}

impl HasUsage for Generation {
    fn usage(&self) -> crate::model::CallUsage {
        self.usage
    }
}

impl HasUsage for Judgment {
    fn usage(&self) -> crate::model::CallUsage {
        self.usage
    }

    fn top_logprobs(&self) -> Option<Vec<Vec<(String, f64)>>> {
        Some(
            self.positions
                .iter()
                .map(|position| {
                    position
                        .iter()
                        .map(|candidate| (candidate.token.clone(), candidate.logprob))
                        .collect()
                })
                .collect(),
        )
    }
}
