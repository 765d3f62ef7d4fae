//! How many attempts of one model may be in flight from this process: a fixed number
//! (`max_concurrency = N`), or an adaptive limit (`max_concurrency = "auto"`) that finds the
//! server's capacity by itself, between 1 and `max_concurrency_limit`.
//!
//! The adaptive limit is AIMD (additive increase, multiplicative decrease), as TCP and Netflix's
//! concurrency-limits do it, with a latency check in the style of their gradient limiter:
//!
//! - It starts at [`INITIAL_LIMIT`] (or `max_concurrency_limit`, if lower).
//! - It grows by one for every limit's worth of successes that finished while at least half the
//!   limit was in use (a limit nobody fills says nothing about the server, so it does not grow).
//! - It is cut to [`BACKOFF`] × itself (at least 1) on an *overload*: a 429 or 503, or a request
//!   that timed out ([`ModelError::Retryable`] with `overloaded`), or when the mean latency of
//!   the last limit's worth of successes is more than [`LATENCY_TOLERANCE`] × its long-run
//!   average (queueing at the server shows as latency before it shows as errors).
//! - Only an attempt that started after the last cut can cut again: the attempts in flight at a
//!   cut were sent under the old limit, so one burst of 429s is one cut, not one per attempt.
//! - Other failures (a 400, a 500, a refused connection) say nothing about load and change
//!   nothing.
//!
//! A cut below the attempts in flight does not stop them: the permits of the attempts that end
//! first are destroyed until the limit holds again. Waiters are served first come, first served
//! (a tokio [`Semaphore`]). The limit is exported as `cai_model_concurrency_limit{model}`, and
//! every change is logged at debug level under [`LIMIT_LOG_TARGET`].
//!
//! Hand-written rather than taken from a crate: the Rust ports of these limiters are young
//! (`congestion-limiter` has had one 0.1 release) or tower layers (`tower-resilience-adaptive`),
//! which the client layer is not; the state here is a few counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cai_common::job::Concurrency;
use cai_common::telemetry::metrics::{ClientLabels, metrics};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::ModelError;

/// Where an adaptive limit starts: low enough for a small server, reached quickly past.
pub const INITIAL_LIMIT: usize = 8;
/// What a cut keeps of the limit.
pub const BACKOFF: f64 = 0.75;
/// How far above its long-run average the recent mean latency may rise before the limit is cut.
pub const LATENCY_TOLERANCE: f64 = 2.0;
/// The weight of each new window in the long-run average latency (about the last 10 windows).
const LATENCY_SMOOTHING: f64 = 0.1;
/// The `tracing` target of the debug lines logged at every change of an adaptive limit
/// (`CAI_LOG=info,cai::model::concurrency=debug`), with the fields `model`, `limit` and `why`.
pub const LIMIT_LOG_TARGET: &str = "cai::model::concurrency";

/// How an attempt ended, for the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered, after this long.
    Success {
        /// From sending the request to reading the reply.
        latency: Duration,
    },
    /// The server is overloaded: a 429 or 503, or no reply in time.
    Overload,
    /// Anything else: says nothing about load.
    Other,
}

impl Outcome {
    /// The outcome of an attempt that ended with `result` after `latency`.
    pub fn of<T>(result: &Result<T, ModelError>, latency: Duration) -> Self {
        match result {
            Ok(_) => Outcome::Success { latency },
            Err(ModelError::Retryable {
                overloaded: true, ..
            }) => Outcome::Overload,
            Err(_) => Outcome::Other,
        }
    }
}

/// The concurrency limit of one model in one process.
pub struct Limiter {
    /// The job's name for the model (the gauge's label, log lines).
    model: String,
    /// One permit per attempt allowed in flight.
    slots: Semaphore,
    /// Fixed or adaptive.
    kind: Kind,
    /// Cuts so far: an attempt remembers the count it started under.
    cuts: AtomicU64,
    /// `cai_model_concurrency_limit{model}`.
    gauge: Gauge,
}

impl Limiter {
    /// The limit of model `model`.
    pub fn new(model: &str, concurrency: Concurrency) -> Self {
        let (initial, kind) = match concurrency {
            Concurrency::Fixed(limit) => (limit.max(1), Kind::Fixed),
            Concurrency::Auto { limit } => {
                let aimd = Aimd::new(limit.max(1));
                (aimd.limit, Kind::Adaptive(Mutex::new(aimd)))
            }
        };
        let gauge = metrics()
            .concurrency_limit
            .get_or_create(&ClientLabels {
                model: model.to_owned(),
            })
            .clone();
        gauge.set(initial as i64);
        Self {
            model: model.to_owned(),
            slots: Semaphore::new(initial),
            kind,
            cuts: AtomicU64::new(0),
            gauge,
        }
    }

    /// Waits for a slot. Hand the permit the attempt's [`Outcome`] when it ends
    /// ([`Permit::finish`]); a permit dropped unfinished (a cancelled call) changes nothing.
    pub async fn acquire(&self) -> Permit<'_> {
        let permit = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        Permit {
            limiter: self,
            permit: Some(permit),
            cuts: self.cuts.load(Ordering::Relaxed),
        }
    }

    /// The limit now (the gauge says it to everyone else).
    #[cfg(test)]
    fn limit(&self) -> usize {
        match &self.kind {
            Kind::Fixed => self.gauge.get() as usize,
            Kind::Adaptive(aimd) => aimd.lock().unwrap_or_else(PoisonError::into_inner).limit,
        }
    }

    /// Learns from an attempt that started under `cuts` cuts, and releases its permit.
    fn finish(&self, permit: SemaphorePermit<'_>, cuts: u64, outcome: Option<Outcome>) {
        let Kind::Adaptive(aimd) = &self.kind else {
            return drop(permit);
        };
        let mut aimd = aimd.lock().unwrap_or_else(PoisonError::into_inner);
        let in_flight = aimd.in_flight(self.slots.available_permits());
        let change = match outcome {
            Some(outcome) => {
                let current = cuts == self.cuts.load(Ordering::Relaxed);
                aimd.learn(outcome, current, in_flight)
            }
            None => Change::None,
        };
        match change {
            Change::None => {}
            Change::Grow => {
                if aimd.debt > 0 {
                    aimd.debt -= 1;
                } else {
                    self.slots.add_permits(1);
                }
            }
            Change::Cut { by } => {
                self.cuts.fetch_add(1, Ordering::Relaxed);
                let forgotten = self.slots.forget_permits(by);
                aimd.debt += by - forgotten;
            }
        }
        if aimd.debt > 0 {
            aimd.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        if let Some(why) = change.why() {
            self.gauge.set(aimd.limit as i64);
            tracing::debug!(target: LIMIT_LOG_TARGET, model = %self.model, limit = aimd.limit, why, "concurrency limit");
        }
    }
}

/// A fixed limit (the semaphore's permits), or the state of an adaptive one.
enum Kind {
    Fixed,
    Adaptive(Mutex<Aimd>),
}

/// A slot held by one attempt.
pub struct Permit<'a> {
    limiter: &'a Limiter,
    /// `None` once released.
    permit: Option<SemaphorePermit<'a>>,
    /// The cuts made when the attempt started.
    cuts: u64,
}

impl Permit<'_> {
    /// Releases the slot, teaching the limit how the attempt ended.
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            self.limiter.finish(permit, self.cuts, Some(outcome));
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.limiter.finish(permit, self.cuts, None);
        }
    }
}

/// What one outcome changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    None,
    Grow,
    /// The limit fell by `by`.
    Cut {
        by: usize,
    },
}

impl Change {
    /// The `why` of the log line, for a change.
    fn why(self) -> Option<&'static str> {
        match self {
            Change::None => None,
            Change::Grow => Some("grew"),
            Change::Cut { .. } => Some("cut"),
        }
    }
}

/// The state of an adaptive limit.
#[derive(Debug)]
struct Aimd {
    /// The limit now, in [1, ceiling].
    limit: usize,
    /// `max_concurrency_limit`.
    ceiling: usize,
    /// Permits to destroy as attempts end, after a cut below the attempts in flight.
    debt: usize,
    /// Successes towards the next growth, counted only while half the limit was in use.
    credits: usize,
    /// Successes in the latency window, and their total latency.
    window_calls: usize,
    window_latency: Duration,
    /// The long-run average of the windows' mean latency, in seconds.
    baseline: Option<f64>,
}

impl Aimd {
    fn new(ceiling: usize) -> Self {
        Self {
            limit: INITIAL_LIMIT.min(ceiling),
            ceiling,
            debt: 0,
            credits: 0,
            window_calls: 0,
            window_latency: Duration::ZERO,
            baseline: None,
        }
    }

    /// Attempts in flight, counting the one ending, given the semaphore's free permits.
    fn in_flight(&self, available: usize) -> usize {
        (self.limit + self.debt).saturating_sub(available)
    }

    /// What `outcome` of an attempt changes; `current` says whether the attempt started after
    /// the last cut; `in_flight` counts it.
    fn learn(&mut self, outcome: Outcome, current: bool, in_flight: usize) -> Change {
        match outcome {
            Outcome::Other => Change::None,
            Outcome::Overload if current => self.cut(),
            Outcome::Overload => Change::None,
            Outcome::Success { latency } => {
                if self.latency_rose(latency) && current {
                    return self.cut();
                }
                if in_flight * 2 >= self.limit {
                    self.credits += 1;
                }
                if self.credits >= self.limit && self.limit < self.ceiling {
                    self.credits = 0;
                    self.limit += 1;
                    return Change::Grow;
                }
                Change::None
            }
        }
    }

    /// Adds a success to the latency window; once it holds a limit's worth, whether its mean
    /// rose past the tolerance over the long-run average (which it then joins).
    fn latency_rose(&mut self, latency: Duration) -> bool {
        self.window_calls += 1;
        self.window_latency += latency;
        if self.window_calls < self.limit {
            return false;
        }
        let mean = self.window_latency.as_secs_f64() / self.window_calls as f64;
        self.window_calls = 0;
        self.window_latency = Duration::ZERO;
        let rose = self
            .baseline
            .is_some_and(|baseline| mean > LATENCY_TOLERANCE * baseline);
        self.baseline = Some(match self.baseline {
            None => mean,
            Some(baseline) => baseline + LATENCY_SMOOTHING * (mean - baseline),
        });
        rose
    }

    /// Cuts the limit to [`BACKOFF`] × itself, at least 1.
    fn cut(&mut self) -> Change {
        let cut = ((self.limit as f64 * BACKOFF) as usize).max(1);
        let by = self.limit - cut;
        self.limit = cut;
        self.credits = 0;
        if by == 0 {
            Change::None
        } else {
            Change::Cut { by }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use futures::FutureExt;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn auto(model: &str, ceiling: usize) -> Limiter {
        Limiter::new(model, Concurrency::Auto { limit: ceiling })
    }

    fn success(ms: u32) -> Outcome {
        Outcome::Success { latency: MS * ms }
    }

    /// Takes every free slot now.
    fn take_all(limiter: &Limiter) -> Vec<Permit<'_>> {
        std::iter::from_fn(|| limiter.acquire().now_or_never()).collect()
    }

    #[test]
    fn a_fixed_limit_holds_exactly_its_slots_and_learns_nothing() {
        let limiter = Limiter::new("fixed-3", Concurrency::Fixed(3));
        let held = take_all(&limiter);
        assert_eq!(held.len(), 3);
        for permit in held {
            permit.finish(Outcome::Overload);
        }
        assert_eq!(take_all(&limiter).len(), 3);
        assert_eq!(limiter.limit(), 3);
        assert_eq!(limiter.gauge.get(), 3);
        assert_eq!(Limiter::new("fixed-0", Concurrency::Fixed(0)).limit(), 1);
    }

    #[test]
    fn the_outcome_of_an_attempt_is_read_from_its_error() {
        let retryable = |overloaded| ModelError::Retryable {
            message: "m".into(),
            retry_after: None,
            unreachable: false,
            overloaded,
            attempts: 1,
        };
        let of = |result: Result<(), ModelError>| Outcome::of(&result, MS * 5);
        assert_eq!(of(Ok(())), success(5));
        assert_eq!(of(Err(retryable(true))), Outcome::Overload);
        assert_eq!(of(Err(retryable(false))), Outcome::Other);
        assert_eq!(
            of(Err(ModelError::SampleFatal("400".into()))),
            Outcome::Other
        );
    }

    #[test]
    fn one_burst_of_overloads_is_one_cut_and_the_limit_never_falls_below_one() {
        let limiter = auto("burst", 64);
        assert_eq!(limiter.limit(), INITIAL_LIMIT);
        // All 8 attempts in flight fail: they were sent under the same limit, so one cut.
        for permit in take_all(&limiter) {
            permit.finish(Outcome::Overload);
        }
        assert_eq!(limiter.limit(), 6);
        assert_eq!(limiter.gauge.get(), 6);
        // Each attempt sent after a cut that fails cuts again, down to 1 and no further.
        for expected in [4, 3, 2, 1, 1, 1] {
            limiter
                .acquire()
                .now_or_never()
                .expect("a free slot")
                .finish(Outcome::Overload);
            assert_eq!(limiter.limit(), expected);
        }
        // Other failures change nothing.
        for permit in take_all(&limiter) {
            permit.finish(Outcome::Other);
        }
        assert_eq!(limiter.limit(), 1);
    }

    #[test]
    fn a_cut_below_the_attempts_in_flight_holds_once_they_end() {
        let limiter = auto("debt", 64);
        let mut held = take_all(&limiter);
        assert_eq!(held.len(), 8);
        held.pop().unwrap().finish(Outcome::Overload);
        assert_eq!(limiter.limit(), 6);
        // 7 still in flight, over the limit of 6: no slot is free until 2 of them end.
        assert!(limiter.acquire().now_or_never().is_none());
        drop(held.pop());
        assert!(limiter.acquire().now_or_never().is_none());
        drop(held);
        assert_eq!(take_all(&limiter).len(), 6);
    }

    #[test]
    fn it_grows_by_one_per_limit_of_busy_successes_up_to_the_ceiling() {
        let limiter = auto("grow", 10);
        let mut limits = vec![limiter.limit()];
        for _ in 0..200 {
            // A full limit in flight, then each ends in turn while the others still run.
            let held = take_all(&limiter);
            assert_eq!(held.len(), limiter.limit());
            for permit in held {
                permit.finish(success(20));
            }
            limits.push(limiter.limit());
        }
        assert!(limits.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
        assert_eq!(*limits.last().unwrap(), 10);
        assert_eq!(limiter.gauge.get(), 10);
    }

    #[test]
    fn a_limit_nobody_fills_does_not_grow() {
        let limiter = auto("idle", 64);
        for _ in 0..1000 {
            limiter
                .acquire()
                .now_or_never()
                .unwrap()
                .finish(success(20));
        }
        assert_eq!(limiter.limit(), INITIAL_LIMIT);
    }

    #[test]
    fn clearly_rising_latency_cuts_and_steady_latency_does_not() {
        let limiter = auto("latency", 8);
        let window = |ms: u32| {
            for permit in take_all(&limiter) {
                permit.finish(success(ms));
            }
        };
        for _ in 0..50 {
            window(100);
        }
        assert_eq!(limiter.limit(), 8);
        // Latency 1.5 × its average is within the tolerance.
        window(150);
        assert_eq!(limiter.limit(), 8);
        window(100);
        window(300);
        assert_eq!(limiter.limit(), 6);
    }

    /// What a simulated run saw: every limit after each attempt, the attempts, the overloads.
    struct Run {
        limits: Vec<usize>,
        attempts: usize,
        overloads: usize,
    }

    /// `clients` loops against a server of `capacity` slots (answering the rest at once with an
    /// overload, which the client retries after 100 ms) and 20 ms per call, for 20 s.
    async fn simulate(ceiling: usize, capacity: Option<usize>, clients: usize) -> Run {
        let limiter = Arc::new(auto(&format!("sim-{capacity:?}"), ceiling));
        let busy = Arc::new(AtomicUsize::new(0));
        let run = Arc::new(Mutex::new(Run {
            limits: Vec::new(),
            attempts: 0,
            overloads: 0,
        }));
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (limiter, busy, run) = (limiter.clone(), busy.clone(), run.clone());
                tokio::spawn(async move {
                    while tokio::time::Instant::now() < end {
                        let permit = limiter.acquire().await;
                        let overloaded =
                            capacity.is_some_and(|slots| busy.load(Ordering::SeqCst) >= slots);
                        if overloaded {
                            permit.finish(Outcome::Overload);
                        } else {
                            busy.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(MS * 20).await;
                            busy.fetch_sub(1, Ordering::SeqCst);
                            permit.finish(success(20));
                        }
                        {
                            let mut run = run.lock().unwrap();
                            run.attempts += 1;
                            run.overloads += usize::from(overloaded);
                            run.limits.push(limiter.limit());
                        }
                        if overloaded {
                            tokio::time::sleep(MS * 100).await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(run).ok().unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn against_16_slots_the_limit_settles_near_16_with_few_overloads() {
        let run = simulate(256, Some(16), 64).await;
        assert!(run.limits.iter().all(|limit| (1..=256).contains(limit)));
        let first_cut = run
            .limits
            .windows(2)
            .position(|w| w[1] < w[0])
            .expect("the limit was cut");
        let settled = &run.limits[first_cut + 1..];
        // The sawtooth: up to one past the capacity, cut to 0.75 × 17 = 12.
        assert_eq!(settled.iter().min(), Some(&12), "{settled:?}");
        assert_eq!(run.limits.iter().max(), Some(&17));
        assert!(
            run.overloads * 100 < run.attempts * 2,
            "{} overloads in {} attempts",
            run.overloads,
            run.attempts
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_server_limit_it_climbs_to_the_ceiling() {
        let run = simulate(32, None, 64).await;
        assert_eq!(run.overloads, 0);
        assert!(run.limits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(run.limits.last(), Some(&32));
    }
}
