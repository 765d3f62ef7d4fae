//! The in-memory state of embedded mode. The output directory is the durable ledger; this
//! mirrors it for the in-process workers. The one thing that must survive a crash, the step
//! cache (else a killed run pays again for the steps its samples in flight had finished), is
//! also written to the output directory's step log when the state is opened with one
//! ([`EmbeddedState::with_step_log`]); so are the records of the batches in flight at a
//! provider's Batch API, in the batch log ([`EmbeddedState::with_batch_log`]).
//!
//! Invariant: everything is indexed by job first and sample second, so per-sample operations
//! cost the same whatever the number of samples held.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::batch_log::{BatchLog, BatchRecords};
use super::step_log::{LoggedSteps, StepLog, Steps};
use super::{StateError, StateStore};
use crate::sample::SampleKey;
use crate::service_error::Service;

/// The step cache: each sample's steps with the bytes its records take in the log, and the log.
#[derive(Default)]
struct StepCache {
    samples: HashMap<(String, SampleKey), (Steps, u64)>,
    log: Option<StepLog>,
}

/// The batch records: (job, id) → record, and the log that keeps them.
#[derive(Default)]
struct Batches {
    records: HashMap<(String, String), Vec<u8>>,
    log: Option<BatchLog>,
}

/// In-memory done set, step cache, batch records, job registry, counters and heartbeats.
#[derive(Default)]
pub struct EmbeddedState {
    done: Mutex<HashMap<String, HashSet<SampleKey>>>,
    steps: Mutex<StepCache>,
    batches: Mutex<Batches>,
    /// job → (spec JSON, fingerprint).
    jobs: Mutex<HashMap<String, (String, String)>>,
    active: Mutex<BTreeSet<String>>,
    counters: Mutex<HashMap<String, BTreeMap<String, i64>>>,
    /// worker id → (info JSON, expiry).
    workers: Mutex<BTreeMap<String, (String, Instant)>>,
    /// job → fatal error.
    fatal: Mutex<HashMap<String, String>>,
    /// (job, sample) → (holder, expiry).
    leases: Mutex<HashMap<(String, SampleKey), (String, Instant)>>,
}

impl EmbeddedState {
    /// A state whose step cache for `job` is also kept in `log`, starting with the steps the log
    /// held for samples not yet committed.
    pub fn with_step_log(job: &str, log: StepLog, steps: LoggedSteps) -> Self {
        let state = Self::default();
        {
            let mut cache = state.steps.lock().expect("state lock");
            cache.samples = steps
                .into_iter()
                .map(|(key, sample)| ((job.to_owned(), key), sample))
                .collect();
            cache.log = Some(log);
        }
        state
    }

    /// This state with the batch records of `job` also kept in `log`, starting with those it
    /// held.
    pub fn with_batch_log(self, job: &str, log: BatchLog, records: BatchRecords) -> Self {
        {
            let mut batches = self.batches.lock().expect("state lock");
            batches.records = records
                .into_iter()
                .map(|(id, record)| ((job.to_owned(), id), record))
                .collect();
            batches.log = Some(log);
        }
        self
    }
}

/// A step-log failure as a job-fatal error: a full volume says how much more it needed.
fn log_error(
    path: &std::path::Path,
    doing: &str,
    error: &std::io::Error,
    needed: usize,
) -> StateError {
    if crate::disk::is_full(error) {
        Service::State.fatal(crate::disk::full_message(path, needed as u64))
    } else {
        Service::State.fatal(format!("{doing} the log {}: {error}", path.display()))
    }
}

#[async_trait]
impl StateStore for EmbeddedState {
    async fn lease(
        &self,
        job: &str,
        key: &SampleKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let mut leases = self.leases.lock().expect("state lock");
        let now = Instant::now();
        let entry = leases.entry((job.to_owned(), *key));
        match entry {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                let (current, expiry) = held.get();
                if current != holder && *expiry > now {
                    return Ok(false);
                }
                held.insert((holder.to_owned(), now + ttl));
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert((holder.to_owned(), now + ttl));
            }
        }
        Ok(true)
    }

    async fn release(&self, job: &str, key: &SampleKey, holder: &str) -> Result<(), StateError> {
        let mut leases = self.leases.lock().expect("state lock");
        let id = (job.to_owned(), *key);
        if leases
            .get(&id)
            .is_some_and(|(current, _)| current == holder)
        {
            leases.remove(&id);
        }
        Ok(())
    }

    async fn done(&self, job: &str, keys: &[SampleKey]) -> Result<Vec<bool>, StateError> {
        let done = self.done.lock().expect("state lock");
        let done = done.get(job);
        Ok(keys
            .iter()
            .map(|key| done.is_some_and(|done| done.contains(key)))
            .collect())
    }

    async fn mark_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let mut done = self.done.lock().expect("state lock");
        done.entry(job.to_owned()).or_default().extend(keys);
        Ok(())
    }

    async fn step_get(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let cache = self.steps.lock().expect("state lock");
        Ok(cache
            .samples
            .get(&(job.to_owned(), *key))
            .and_then(|(steps, _)| steps.get(step))
            .cloned())
    }

    async fn step_put(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let mut cache = self.steps.lock().expect("state lock");
        let written = match &mut cache.log {
            Some(log) => log
                .append(key, step, &value)
                .map_err(|e| log_error(log.path(), "writing", &e, value.len()))?,
            None => 0,
        };
        let (steps, bytes) = cache.samples.entry((job.to_owned(), *key)).or_default();
        steps.insert(step.to_owned(), value);
        *bytes += written;
        Ok(())
    }

    async fn step_forget(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let mut guard = self.steps.lock().expect("state lock");
        let cache = &mut *guard;
        let mut forgotten = 0;
        for key in keys {
            if let Some((_, bytes)) = cache.samples.remove(&(job.to_owned(), *key)) {
                forgotten += bytes;
            }
        }
        if let Some(log) = &mut cache.log {
            let cached = cache
                .samples
                .iter()
                .filter(|((step_job, _), _)| step_job == job)
                .map(|((_, key), (steps, _))| (key, steps));
            log.forget(forgotten, cached)
                .map_err(|e| log_error(log.path(), "compacting", &e, 0))?;
        }
        Ok(())
    }

    async fn batch_put(&self, job: &str, id: &str, record: Vec<u8>) -> Result<(), StateError> {
        let mut batches = self.batches.lock().expect("state lock");
        if let Some(log) = &mut batches.log {
            log.append(id, Some(&record))
                .map_err(|e| log_error(log.path(), "writing", &e, record.len()))?;
        }
        batches
            .records
            .insert((job.to_owned(), id.to_owned()), record);
        Ok(())
    }

    async fn batch_records(&self, job: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let batches = self.batches.lock().expect("state lock");
        Ok(batches
            .records
            .iter()
            .filter(|((record_job, _), _)| record_job == job)
            .map(|((_, id), record)| (id.clone(), record.clone()))
            .collect())
    }

    async fn batch_remove(&self, job: &str, id: &str) -> Result<(), StateError> {
        let mut batches = self.batches.lock().expect("state lock");
        if batches
            .records
            .remove(&(job.to_owned(), id.to_owned()))
            .is_some()
            && let Some(log) = &mut batches.log
        {
            log.append(id, None)
                .map_err(|e| log_error(log.path(), "writing", &e, id.len()))?;
        }
        Ok(())
    }

    async fn put_job(
        &self,
        job: &str,
        spec_json: &str,
        fingerprint: &str,
    ) -> Result<(), StateError> {
        let mut jobs = self.jobs.lock().expect("state lock");
        jobs.insert(
            job.to_owned(),
            (spec_json.to_owned(), fingerprint.to_owned()),
        );
        Ok(())
    }

    async fn get_job(&self, job: &str) -> Result<Option<(String, String)>, StateError> {
        Ok(self.jobs.lock().expect("state lock").get(job).cloned())
    }

    async fn set_fatal(&self, job: &str, message: &str) -> Result<(), StateError> {
        let mut fatal = self.fatal.lock().expect("state lock");
        fatal
            .entry(job.to_owned())
            .or_insert_with(|| message.to_owned());
        Ok(())
    }

    async fn fatal(&self, job: &str) -> Result<Option<String>, StateError> {
        Ok(self.fatal.lock().expect("state lock").get(job).cloned())
    }

    async fn clear_fatal(&self, job: &str) -> Result<(), StateError> {
        self.fatal.lock().expect("state lock").remove(job);
        Ok(())
    }

    async fn active_jobs(&self) -> Result<Vec<String>, StateError> {
        Ok(self
            .active
            .lock()
            .expect("state lock")
            .iter()
            .cloned()
            .collect())
    }

    async fn set_active(&self, job: &str, active: bool) -> Result<(), StateError> {
        let mut jobs = self.active.lock().expect("state lock");
        if active {
            jobs.insert(job.to_owned());
        } else {
            jobs.remove(job);
        }
        Ok(())
    }

    async fn add_counters(&self, job: &str, deltas: &[(&str, i64)]) -> Result<(), StateError> {
        let mut counters = self.counters.lock().expect("state lock");
        let counters = counters.entry(job.to_owned()).or_default();
        for (name, delta) in deltas {
            *counters.entry((*name).to_owned()).or_default() += delta;
        }
        Ok(())
    }

    async fn counters(&self, job: &str) -> Result<BTreeMap<String, i64>, StateError> {
        let counters = self.counters.lock().expect("state lock");
        Ok(counters.get(job).cloned().unwrap_or_default())
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        info_json: &str,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut workers = self.workers.lock().expect("state lock");
        workers.insert(
            worker_id.to_owned(),
            (info_json.to_owned(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut workers = self.workers.lock().expect("state lock");
        let now = Instant::now();
        workers.retain(|_, (_, expiry)| *expiry > now);
        Ok(workers
            .iter()
            .map(|(id, (info, _))| (id.clone(), info.clone()))
            .collect())
    }

    async fn done_count(&self, job: &str) -> Result<u64, StateError> {
        let done = self.done.lock().expect("state lock");
        Ok(done.get(job).map_or(0, |done| done.len() as u64))
    }

    async fn reset_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let mut done = self.done.lock().expect("state lock");
        done.insert(job.to_owned(), keys.iter().copied().collect());
        Ok(())
    }

    async fn clear_job(&self, job: &str) -> Result<(), StateError> {
        self.done.lock().expect("state lock").remove(job);
        self.steps
            .lock()
            .expect("state lock")
            .samples
            .retain(|(step_job, _), _| step_job != job);
        self.batches
            .lock()
            .expect("state lock")
            .records
            .retain(|(batch_job, _), _| batch_job != job);
        self.jobs.lock().expect("state lock").remove(job);
        self.active.lock().expect("state lock").remove(job);
        self.counters.lock().expect("state lock").remove(job);
        self.fatal.lock().expect("state lock").remove(job);
        self.leases
            .lock()
            .expect("state lock")
            .retain(|(lease_job, _), _| lease_job != job);
        Ok(())
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SampleKey {
        SampleKey([n; 16])
    }

    #[tokio::test]
    async fn done_steps_and_clear_are_per_job() {
        let state = EmbeddedState::default();
        state.mark_done("a", &[key(1), key(2)]).await.unwrap();
        state.mark_done("b", &[key(1)]).await.unwrap();
        assert_eq!(
            state.done("a", &[key(1), key(3)]).await.unwrap(),
            [true, false]
        );
        assert_eq!(state.done_count("a").await.unwrap(), 2);
        state.reset_done("a", &[key(3)]).await.unwrap();
        assert_eq!(
            state.done("a", &[key(1), key(3)]).await.unwrap(),
            [false, true]
        );

        state
            .step_put("a", &key(1), "s", b"v".to_vec())
            .await
            .unwrap();
        state
            .step_put("b", &key(1), "s", b"w".to_vec())
            .await
            .unwrap();
        state.step_forget("a", &[key(1)]).await.unwrap();
        assert_eq!(state.step_get("a", &key(1), "s").await.unwrap(), None);
        assert_eq!(
            state.step_get("b", &key(1), "s").await.unwrap(),
            Some(b"w".to_vec())
        );

        state.put_job("a", "{}", "f").await.unwrap();
        state.set_active("a", true).await.unwrap();
        state
            .add_counters("a", &[("done", 2), ("done", 1)])
            .await
            .unwrap();
        assert_eq!(state.counters("a").await.unwrap()["done"], 3);
        state.set_fatal("a", "401").await.unwrap();
        state.set_fatal("a", "later").await.unwrap();
        assert_eq!(state.fatal("a").await.unwrap().as_deref(), Some("401"));
        state.clear_job("a").await.unwrap();
        assert_eq!(state.get_job("a").await.unwrap(), None);
        assert!(state.active_jobs().await.unwrap().is_empty());
        assert!(state.counters("a").await.unwrap().is_empty());
        assert_eq!(state.fatal("a").await.unwrap(), None);
        assert_eq!(state.done_count("a").await.unwrap(), 0);
        assert_eq!(state.done_count("b").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn expired_heartbeats_are_not_listed() {
        let state = EmbeddedState::default();
        state
            .heartbeat("w1", "{}", Duration::from_secs(60))
            .await
            .unwrap();
        state.heartbeat("w2", "{}", Duration::ZERO).await.unwrap();
        assert_eq!(
            state.workers().await.unwrap(),
            [("w1".to_owned(), "{}".to_owned())]
        );
    }
}
