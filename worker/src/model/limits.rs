//! Client-side rate limits of one model: requests per minute (`rpm`) and tokens per minute
//! (`tpm`), both optional, enforced before every attempt of a call (retries included).
//!
//! Each limit is a token bucket refilled continuously: it holds at most one minute's worth
//! (`limit`), starts full, and gains `limit / 60` every second. A request takes one unit from
//! the request bucket. Tokens are charged in two steps, because a call's size is only known
//! once it has been answered:
//!
//! 1. Before the attempt, the *estimate* is taken from the token bucket: the prompt's characters
//!    divided by four plus the call's `max_tokens` (the most it can cost), as hosted APIs do.
//! 2. Afterwards [`Charge::settle`] corrects the charge to what was spent: the reply's `usage`
//!    (prompt plus completion tokens) when it reports one, the prompt estimate alone when the
//!    attempt failed (the server read the prompt; nothing came back). The difference is given
//!    back to, or taken from, the bucket.
//!
//! A call may cost more than the bucket holds (a long prompt under a small `tpm`): it waits until
//! the bucket is full and then drives it into debt, which later calls wait out, so the long-run
//! rate never exceeds the limit and no call waits forever. Waiters are served first come, first
//! served. A burst of up to one minute's worth goes out at once after an idle minute; a server
//! that still answers 429 is retried like any other transient failure.
//!
//! The buckets are hand-written rather than taken from a crate: GCRA limiters (`governor`) take
//! fixed-size cells and can neither charge more than their burst size nor refund a reservation,
//! which is what the `usage` correction needs.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Added to a bucket's level before it is compared with a cost, so that float rounding of the
/// refill never leaves a waiter short by a hair.
const EPSILON: f64 = 1e-9;
/// The shortest sleep of a waiter (tokio's timer has millisecond resolution).
const MIN_WAIT: Duration = Duration::from_millis(1);

/// The rate limits of one model; without limits every admission is immediate.
#[derive(Debug)]
pub struct RateLimits {
    /// One unit per request, `rpm` a minute.
    requests: Option<TokenBucket>,
    /// One unit per token, `tpm` a minute.
    tokens: Option<TokenBucket>,
}

impl RateLimits {
    /// Limits of `rpm` requests and `tpm` tokens a minute; `None` is no limit.
    pub fn new(rpm: Option<u32>, tpm: Option<u64>) -> Self {
        Self {
            requests: rpm.map(|limit| TokenBucket::per_minute(f64::from(limit))),
            tokens: tpm.map(|limit| TokenBucket::per_minute(limit as f64)),
        }
    }

    /// Waits until one more request and `estimate` more tokens are allowed, and takes them. The
    /// returned [`Charge`] corrects the token charge once the call's real size is known; if it
    /// is dropped instead, the estimate stays charged.
    pub async fn admit(&self, estimate: u64) -> Charge<'_> {
        if let Some(requests) = &self.requests {
            requests.take(1.0).await;
        }
        if let Some(tokens) = &self.tokens {
            tokens.take(estimate as f64).await;
        }
        Charge {
            limits: self,
            charged: estimate,
        }
    }
}

/// The tokens an admitted attempt was charged.
#[must_use = "settle the charge with the tokens the call really used"]
#[derive(Debug)]
pub struct Charge<'a> {
    limits: &'a RateLimits,
    charged: u64,
}

impl Charge<'_> {
    /// Corrects the charge to `used` tokens: gives back the difference when the estimate was
    /// too high, takes more when it was too low.
    pub fn settle(self, used: u64) {
        if let Some(tokens) = &self.limits.tokens {
            tokens.give_back(self.charged as f64 - used as f64);
        }
    }
}

/// A token bucket with a FIFO queue of waiters that may go into debt.
#[derive(Debug)]
struct TokenBucket {
    /// The most it holds: one minute's worth.
    capacity: f64,
    /// What it gains per second.
    per_second: f64,
    /// The level at an instant (short critical sections, never held across an await).
    level: Mutex<Level>,
    /// Held by the waiter whose turn it is, so that waiters are served in order.
    queue: tokio::sync::Mutex<()>,
}

/// A bucket's level (negative: in debt) as of an instant.
#[derive(Debug)]
struct Level {
    units: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `limit` units refilled at `limit` a minute.
    fn per_minute(limit: f64) -> Self {
        Self {
            capacity: limit,
            per_second: limit / 60.0,
            level: Mutex::new(Level {
                units: limit,
                at: Instant::now(),
            }),
            queue: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits until the bucket holds `cost` units (or is full, for a cost above its capacity)
    /// and takes `cost`.
    async fn take(&self, cost: f64) {
        let _turn = self.queue.lock().await;
        let needed = cost.min(self.capacity);
        loop {
            let shortfall = self.update(|level| {
                if level.units + EPSILON >= needed {
                    level.units -= cost;
                    0.0
                } else {
                    needed - level.units
                }
            });
            if shortfall <= 0.0 {
                return;
            }
            let wait = Duration::from_secs_f64(shortfall / self.per_second);
            tokio::time::sleep(wait.max(MIN_WAIT)).await;
        }
    }

    /// Adds `units` (negative: removes them), never above the capacity.
    fn give_back(&self, units: f64) {
        self.update(|level| level.units = (level.units + units).min(self.capacity));
    }

    /// Refills the bucket up to now, then applies `change` to its level.
    fn update<T>(&self, change: impl FnOnce(&mut Level) -> T) -> T {
        let mut level = self.level.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(level.at).as_secs_f64() * self.per_second;
        level.units = (level.units + refill).min(self.capacity);
        level.at = now;
        change(&mut level)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use cai_common::job::Job;

    use super::*;

    /// Seconds since `start` on tokio's (paused) clock.
    fn since(start: Instant) -> f64 {
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn without_limits_nothing_waits() {
        let limits = RateLimits::new(None, None);
        let start = Instant::now();
        for _ in 0..10_000 {
            limits.admit(1_000_000).await.settle(2_000_000);
        }
        assert_eq!(since(start), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn rpm_allows_a_minute_at_once_then_spaces_requests_evenly() {
        let limits = RateLimits::new(Some(120), None);
        let start = Instant::now();
        for _ in 0..120 {
            limits.admit(0).await.settle(0);
        }
        assert_eq!(since(start), 0.0, "a full bucket admits one minute's worth");
        limits.admit(0).await.settle(0);
        let first = since(start);
        assert!((0.5..0.51).contains(&first), "{first}");
        for _ in 0..119 {
            limits.admit(0).await.settle(0);
        }
        // 120 more requests at 2 a second.
        let all = since(start);
        assert!((60.0..60.2).contains(&all), "{all}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let limits = Arc::new(RateLimits::new(Some(60), None));
        let start = Instant::now();
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let limits = limits.clone();
                tokio::spawn(async move {
                    for _ in 0..30 {
                        limits.admit(0).await.settle(0);
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        // 120 requests: 60 from the full bucket, 60 more at one a second.
        let elapsed = since(start);
        assert!((60.0..60.2).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn usage_gives_back_an_overestimate() {
        let limits = RateLimits::new(None, Some(6_000));
        let start = Instant::now();
        // The estimate takes the whole bucket; the reply used a tenth of it.
        limits.admit(6_000).await.settle(600);
        limits.admit(5_000).await.settle(5_000);
        assert_eq!(since(start), 0.0);
        // 400 left; 1,000 more need 600 at 100 a second.
        limits.admit(1_000).await.settle(1_000);
        let elapsed = since(start);
        assert!((6.0..6.01).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn usage_above_the_estimate_is_charged() {
        let limits = RateLimits::new(None, Some(6_000));
        let start = Instant::now();
        limits.admit(1_000).await.settle(6_000);
        // The bucket is empty: 600 tokens take 6 s.
        limits.admit(600).await.settle(600);
        let elapsed = since(start);
        assert!((6.0..6.01).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_larger_than_the_bucket_runs_into_debt() {
        let limits = RateLimits::new(None, Some(600));
        let start = Instant::now();
        // Larger than a minute's worth: admitted at once from the full bucket, 1,400 in debt.
        limits.admit(2_000).await.settle(2_000);
        assert_eq!(since(start), 0.0);
        // The debt and 100 more tokens take 150 s at 10 a second.
        limits.admit(100).await.settle(100);
        let elapsed = since(start);
        assert!((150.0..150.01).contains(&elapsed), "{elapsed}");
        // Another oversized call waits until the bucket is full again (60 s), not forever.
        limits.admit(10_000).await.settle(10_000);
        let elapsed = since(start);
        assert!((210.0..210.01).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn both_limits_apply() {
        // 60 requests a minute allow one a second; 600 tokens a minute allow 100 tokens every
        // 10 s, so the token limit sets the pace.
        let limits = RateLimits::new(Some(60), Some(600));
        let start = Instant::now();
        for _ in 0..12 {
            limits.admit(100).await.settle(100);
        }
        // 600 from the full bucket, then 6 × 100 at 10 a second.
        let elapsed = since(start);
        assert!((60.0..60.1).contains(&elapsed), "{elapsed}");
    }

    const JOB: &str = r#"
name = "limits"
pipeline = "critique-revise"
[input]
path = "prompts.jsonl"
prompt = "prompt"
[constitution]
path = "constitution.toml"
[critique_revise]
model = "policy"
[models.policy]
backend = "openai"
url = "http://127.0.0.1:8000/v1"
model = "m"
"#;

    fn parse(extra: &str) -> Result<Job, String> {
        Job::parse(&format!("{JOB}{extra}\n"), Path::new("job.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_budget_and_prices_are_operational_and_checked() {
        let plain = parse("").unwrap();
        let limited =
            parse("rpm = 500\ntpm = 90000\nretry_budget_s = 600\nprice_in = 0.15\nprice_out = 0.6")
                .unwrap();
        let policy = &limited.spec.models["policy"].policy;
        assert_eq!(
            (policy.rpm, policy.tpm, policy.retry_budget_s),
            (Some(500), Some(90_000), Some(600))
        );
        assert_eq!((policy.price_in, policy.price_out), (Some(0.15), Some(0.6)));
        assert_eq!(
            plain.spec.fingerprint("c"),
            limited.spec.fingerprint("c"),
            "how a model is called does not change what a job computes"
        );
        for (bad, field) in [
            ("rpm = 0", "rpm"),
            ("tpm = 0", "tpm"),
            ("retry_budget_s = 0", "retry_budget_s"),
            ("price_in = -1.0", "price_in"),
            ("price_out = nan", "price_out"),
            ("price_out = inf", "price_out"),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(field), "{bad}: {error}");
        }
    }
}
