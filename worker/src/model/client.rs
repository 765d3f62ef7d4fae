//! The one client layer every backend goes through: a model's calls are bounded in flight
//! (`max_concurrency`: a fixed number, or an adaptive limit that learns from every attempt's
//! outcome, [`super::concurrency`]), paced by its `rpm` and `tpm` limits ([`super::limits`]), and retried
//! with exponential backoff and full jitter (a uniform wait below the exponential delay) that
//! honours a server's `Retry-After`, for at most `max_retries` retries and, if set,
//! `retry_budget_s` seconds per call. A backend only speaks its wire format and classifies its
//! failures ([`ModelError`]); it never sleeps, counts or retries, so a new backend gets all of
//! this by being wrapped in [`Governed`] (which [`super::Models::build`] does for every model).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use cai_common::job::ModelSpec;
use cai_common::telemetry::metrics::{ClientLabels, metrics};
use tokio::time::Instant;

use super::concurrency::{Limiter, Outcome};
use super::limits::RateLimits;
use super::{CallUsage, Generation, Judgment, Model, ModelError, Prompt};

/// First backoff delay (doubled per retry; the wait is drawn uniformly below it).
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is not waited out here: the error goes back to the caller.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Generated tokens a judgment asks for, for the `tpm` estimate of a judgment.
const JUDGE_TOKENS: u64 = 3;

/// A model behind the call policy of its spec.
pub struct Governed {
    /// The job's name for the model (metrics, log lines).
    name: String,
    inner: Arc<dyn Model>,
    /// Bounds the attempts in flight.
    in_flight: Limiter,
    /// Paces the attempts (`rpm`, `tpm`).
    limits: RateLimits,
    max_retries: u32,
    /// The most time a call may spend before starting another retry.
    retry_budget: Option<Duration>,
    /// Generated tokens a generation may use, for the `tpm` estimate.
    max_tokens: u64,
}

impl Governed {
    /// `inner` under the policy of `spec`.
    pub fn new(name: &str, spec: &ModelSpec, inner: Arc<dyn Model>) -> Self {
        let policy = &spec.policy;
        Self {
            name: name.to_owned(),
            inner,
            in_flight: Limiter::new(name, policy.max_concurrency),
            limits: RateLimits::new(policy.rpm, policy.tpm),
            max_retries: policy.max_retries,
            retry_budget: policy.retry_budget_s.map(Duration::from_secs),
            max_tokens: u64::from(spec.sampling.max_tokens),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries or the retry budget run
    /// out (then the last error, with the attempts made). `generated` is the most tokens one
    /// attempt may generate; `usage` reads what an attempt's reply reports.
    async fn call<T, F, Fut>(
        &self,
        prompt: &Prompt,
        generated: u64,
        usage: impl Fn(&T) -> CallUsage,
        attempt: F,
    ) -> Result<T, ModelError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ModelError>>,
    {
        let prompt_tokens = self.inner.prompt_tokens(prompt);
        let started = Instant::now();
        let budget_spent = AtomicBool::new(false);
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.max_retries as usize);
        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.admitted(prompt_tokens, generated, &usage, &attempt)
        })
        .retry(backoff)
        .when(|error| matches!(error, ModelError::Retryable { .. }))
        .adjust(|error, backoff| {
            let wait = wait_before_retry(error, backoff.map(full_jitter))?;
            if exceeds_budget(self.retry_budget, started.elapsed(), wait) {
                budget_spent.store(true, Ordering::Relaxed);
                return None;
            }
            Some(wait)
        })
        .notify(|error, delay| {
            metrics()
                .retries
                .get_or_create(&ClientLabels {
                    model: self.name.clone(),
                })
                .inc();
            tracing::warn!(
                model = %self.name,
                delay_ms = delay.as_millis() as u64,
                %error,
                "model call failed; retrying"
            );
        })
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        // The caller's model-call span says how many attempts the call took.
        tracing::Span::current().record("attempts", attempts);
        result.map_err(|error| match error {
            ModelError::Retryable {
                message,
                retry_after,
                unreachable,
                overloaded,
                ..
            } => ModelError::Retryable {
                message: match self.retry_budget {
                    Some(budget) if budget_spent.load(Ordering::Relaxed) => format!(
                        "{message} (the retry budget of {} s is spent)",
                        budget.as_secs()
                    ),
                    _ => message,
                },
                retry_after,
                unreachable,
                overloaded,
                attempts,
            },
            other => other,
        })
    }

    /// One attempt: waits for a slot and the rate limits, runs it, tells the concurrency limit
    /// how it ended, and settles the token charge with the reply's usage (with the prompt
    /// estimate alone when the attempt failed, with the whole estimate when a reply reports no
    /// usage).
    async fn admitted<T, F, Fut>(
        &self,
        prompt_tokens: u64,
        generated: u64,
        usage: &impl Fn(&T) -> CallUsage,
        attempt: &F,
    ) -> Result<T, ModelError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ModelError>>,
    {
        let slot = self.in_flight.acquire().await;
        let estimate = prompt_tokens + generated;
        let charge = self.limits.admit(estimate).await;
        let sent = Instant::now();
        let result = attempt().await;
        slot.finish(Outcome::of(&result, sent.elapsed()));
        charge.settle(match &result {
            Ok(reply) => match usage(reply) {
                used if used == CallUsage::default() => estimate,
                used => used.tokens_in + used.tokens_out,
            },
            Err(_) => prompt_tokens,
        });
        result
    }
}

#[async_trait]
impl Model for Governed {
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        let usage = |generation: &Generation| generation.usage;
        self.call(prompt, self.max_tokens, usage, || {
            self.inner.generate(prompt, seed)
        })
        .await
    }

    async fn judge(&self, prompt: &Prompt, seed: u64) -> Result<Judgment, ModelError> {
        let usage = |judgment: &Judgment| judgment.usage;
        self.call(prompt, JUDGE_TOKENS, usage, || {
            self.inner.judge(prompt, seed)
        })
        .await
    }

    async fn verdict(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        let usage = |generation: &Generation| generation.usage;
        self.call(prompt, self.max_tokens, usage, || {
            self.inner.verdict(prompt, seed)
        })
        .await
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        self.inner.prompt_tokens(prompt)
    }
}

/// The backoff before the next attempt: at least the server's `Retry-After`; none (give the
/// error back) when retries are exhausted or the server asks for more than [`MAX_RETRY_AFTER`].
fn wait_before_retry(error: &ModelError, backoff: Option<Duration>) -> Option<Duration> {
    let backoff = backoff?;
    match error {
        ModelError::Retryable {
            retry_after: Some(wait),
            ..
        } if *wait > MAX_RETRY_AFTER => None,
        ModelError::Retryable {
            retry_after: Some(wait),
            ..
        } => Some(backoff.max(*wait)),
        _ => Some(backoff),
    }
}

/// Full jitter: a wait drawn uniformly from `[0, delay)`, so that clients that failed together do
/// not retry together.
fn full_jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random::<f64>())
}

/// Whether waiting `wait` more, after `elapsed` of the call, would end past the retry budget.
fn exceeds_budget(budget: Option<Duration>, elapsed: Duration, wait: Duration) -> bool {
    budget.is_some_and(|budget| elapsed + wait > budget)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::{Speaker, Turn};

    /// A backend that answers from a script of outcomes, one per attempt, and counts attempts.
    struct Scripted {
        script: Mutex<Vec<Result<Generation, ModelError>>>,
        attempts: AtomicU32,
    }

    #[async_trait]
    impl Model for Scripted {
        async fn generate(&self, _: &Prompt, _: u64) -> Result<Generation, ModelError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.script.lock().unwrap().remove(0)
        }

        async fn judge(&self, _: &Prompt, _: u64) -> Result<Judgment, ModelError> {
            unreachable!("not judged")
        }
    }

    fn retryable(retry_after: Option<Duration>) -> ModelError {
        ModelError::Retryable {
            message: "HTTP 503".into(),
            retry_after,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        }
    }

    fn governed(
        script: Vec<Result<Generation, ModelError>>,
        edit: impl FnOnce(&mut ModelSpec),
    ) -> (Governed, Arc<Scripted>) {
        let inner = Arc::new(Scripted {
            script: Mutex::new(script),
            attempts: AtomicU32::new(0),
        });
        let mut spec: ModelSpec =
            serde_json::from_value(serde_json::json!({"backend": "mock"})).unwrap();
        edit(&mut spec);
        (Governed::new("m", &spec, inner.clone()), inner)
    }

    fn prompt() -> Prompt {
        Prompt {
            turns: vec![Turn::new(Speaker::Human, "hi")],
            reply_as: Some(Speaker::Assistant),
            prefill: None,
        }
    }

    fn ok() -> Result<Generation, ModelError> {
        Ok(Generation {
            text: "hello".into(),
            usage: CallUsage::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_the_attempts_counted() {
        let (model, inner) = governed(
            vec![Err(retryable(None)), Err(retryable(None)), ok()],
            |spec| {
                spec.policy.max_retries = 3;
            },
        );
        assert_eq!(model.generate(&prompt(), 1).await.unwrap().text, "hello");
        assert_eq!(inner.attempts.load(Ordering::SeqCst), 3);

        let (model, inner) = governed(vec![Err(retryable(None)); 3], |spec| {
            spec.policy.max_retries = 2
        });
        match model.generate(&prompt(), 1).await {
            Err(ModelError::Retryable { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(inner.attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_for_good_is_not_retried() {
        let (model, inner) = governed(
            vec![Err(ModelError::SampleFatal("HTTP 400".into())), ok()],
            |spec| spec.policy.max_retries = 5,
        );
        assert!(matches!(
            model.generate(&prompt(), 1).await,
            Err(ModelError::SampleFatal(_))
        ));
        assert_eq!(inner.attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_and_the_budget_ends_the_retries() {
        let (model, _) = governed(
            vec![Err(retryable(Some(Duration::from_secs(20)))), ok()],
            |spec| {
                spec.policy.max_retries = 3;
            },
        );
        let started = Instant::now();
        model.generate(&prompt(), 1).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );

        let (model, inner) = governed(
            vec![Err(retryable(Some(Duration::from_secs(20)))), ok()],
            |spec| {
                spec.policy.max_retries = 3;
                spec.policy.retry_budget_s = Some(10);
            },
        );
        match model.generate(&prompt(), 1).await {
            Err(ModelError::Retryable { message, .. }) => {
                assert!(message.contains("retry budget of 10 s"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(inner.attempts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retry_after_sets_the_least_wait_and_a_huge_one_is_handed_back() {
        let second = Some(Duration::from_secs(1));
        assert_eq!(wait_before_retry(&retryable(None), second), second);
        assert_eq!(
            wait_before_retry(&retryable(Some(Duration::from_secs(7))), second),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait_before_retry(&retryable(Some(Duration::from_millis(10))), second),
            second
        );
        assert_eq!(
            wait_before_retry(&retryable(Some(Duration::from_secs(3600))), second),
            None
        );
        assert_eq!(wait_before_retry(&retryable(None), None), None);
    }

    #[test]
    fn full_jitter_draws_below_the_delay_and_the_budget_stops_retries() {
        let delay = Duration::from_secs(8);
        let waits: Vec<Duration> = (0..1000).map(|_| full_jitter(delay)).collect();
        assert!(waits.iter().all(|wait| *wait < delay));
        assert!(waits.iter().any(|wait| *wait < Duration::from_secs(1)));
        assert!(waits.iter().any(|wait| *wait > Duration::from_secs(7)));

        let secs = Duration::from_secs;
        assert!(!exceeds_budget(None, secs(10_000), secs(30)));
        assert!(!exceeds_budget(Some(secs(60)), secs(50), secs(10)));
        assert!(exceeds_budget(Some(secs(60)), secs(50), secs(11)));
        assert!(exceeds_budget(Some(secs(60)), secs(61), Duration::ZERO));
    }
}
