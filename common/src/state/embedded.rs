//! The in-memory state of embedded mode. The output directory is the durable ledger; this
//! only mirrors it for the in-process workers, so nothing here needs to survive a crash.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{StateError, StateStore};
use crate::sample::SampleKey;

/// In-memory done set and step cache.
#[derive(Default)]
pub struct EmbeddedState {
    done: Mutex<HashSet<(String, SampleKey)>>,
    steps: Mutex<HashMap<(String, SampleKey, String), Vec<u8>>>,
}

#[async_trait]
impl StateStore for EmbeddedState {
    async fn done(&self, job: &str, keys: &[SampleKey]) -> Result<Vec<bool>, StateError> {
        let done = self.done.lock().expect("state lock");
        Ok(keys.iter().map(|key| done.contains(&(job.to_owned(), *key))).collect())
    }

    async fn mark_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let mut done = self.done.lock().expect("state lock");
        done.extend(keys.iter().map(|key| (job.to_owned(), *key)));
        Ok(())
    }

    async fn step_get(&self, job: &str, key: &SampleKey, step: &str) -> Result<Option<Vec<u8>>, StateError> {
        let steps = self.steps.lock().expect("state lock");
        Ok(steps.get(&(job.to_owned(), *key, step.to_owned())).cloned())
    }

    async fn step_put(&self, job: &str, key: &SampleKey, step: &str, value: Vec<u8>) -> Result<(), StateError> {
        let mut steps = self.steps.lock().expect("state lock");
        steps.insert((job.to_owned(), *key, step.to_owned()), value);
        Ok(())
    }

    async fn step_forget(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let keys: HashSet<&SampleKey> = keys.iter().collect();
        let mut steps = self.steps.lock().expect("state lock");
        steps.retain(|(step_job, key, _), _| step_job != job || !keys.contains(key));
        Ok(())
    }
}
