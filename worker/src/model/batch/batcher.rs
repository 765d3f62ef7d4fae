//! The batcher of one model in one process: a task that gathers the calls waiting (up to
//! `batch_size` lines, for at most `batch_wait_s` seconds from the first), hands them to a
//! batch ([`super::run`]) and resolves each call when its batch is finished.
//!
//! Before it submits new calls it reads the job's batch records: a call already recorded in a
//! batch (submitted by a process that was killed, or by another worker) waits for that batch
//! instead. A line that failed for a reason that may pass (429, 5xx, a batch that expired, was
//! cancelled or failed) goes into a later batch, up to `max_retries` times; any other failure
//! fails its call as a direct call's would. Once every line of a batch was consumed here (its
//! call answered or retried), its record is removed after [`RECORD_GRACE`], time for the
//! answer to reach the step cache.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::super::ModelError;
use super::records::Record;
use super::run::{self, Context, Finished, Work};

/// The most bytes of lines in one batch's input file (OpenAI takes files of up to 200 MB).
pub(super) const MAX_BATCH_BYTES: usize = 100 << 20;

/// How long a batch's record outlives the consumption of its last line.
pub(super) const RECORD_GRACE: Duration = Duration::from_secs(60);

/// A call handed to the batcher.
struct Call {
    custom_id: String,
    line: String,
    reply: oneshot::Sender<Result<String, ModelError>>,
}

/// The handle of a model's batcher task; dropping it ends the task. A call's answer is the
/// body of its line's reply, already checked to read as one.
pub(super) struct Batcher {
    calls: mpsc::UnboundedSender<Call>,
}

/// How calls are gathered into batches.
#[derive(Clone, Copy)]
pub(super) struct Gathering {
    /// Most lines in a batch.
    pub(super) size: usize,
    /// Longest wait from the first call gathered to the submission.
    pub(super) wait: Duration,
    /// Times a line is sent again in a later batch before its call fails.
    pub(super) max_retries: u32,
}

impl Batcher {
    /// Starts the batcher task (in the current tokio runtime).
    pub(super) fn start(context: Arc<Context>, gathering: Gathering) -> Self {
        let (calls, receiver) = mpsc::unbounded_channel();
        let gatherer = Gatherer {
            context,
            gathering,
            waiting: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            deadline: None,
            running: JoinSet::new(),
            tickets: 0,
            attached: HashMap::new(),
            unconsumed: HashMap::new(),
            removals: VecDeque::new(),
        };
        tokio::spawn(gatherer.run(receiver));
        Self { calls }
    }

    /// Makes a call as line `line` of a batch: its reply once the batch is finished.
    pub(super) async fn call(&self, custom_id: String, line: String) -> Result<String, ModelError> {
        let (reply, answer) = oneshot::channel();
        let gone = || ModelError::JobFatal("the batcher of the model stopped".into());
        self.calls
            .send(Call {
                custom_id,
                line,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// A call not yet answered.
struct Waiting {
    line: String,
    /// Every caller waiting for it (the same call asked twice waits once).
    replies: Vec<oneshot::Sender<Result<String, ModelError>>>,
    /// Times it was sent again.
    retries: u32,
    /// The batch it waits for, if it is not gathered for the next one.
    ticket: Option<u64>,
}

struct Gatherer {
    context: Arc<Context>,
    gathering: Gathering,
    waiting: HashMap<String, Waiting>,
    /// Calls gathered for the next batch, in order of arrival.
    pending: Vec<String>,
    /// The bytes of their lines.
    pending_bytes: usize,
    /// When the next batch goes, whatever its size.
    deadline: Option<Instant>,
    /// The batches waited for, each with its ticket.
    running: JoinSet<(u64, Finished)>,
    tickets: u64,
    /// Recorded batches waited for here, by input file: their ticket.
    attached: HashMap<String, u64>,
    /// Lines of a recorded batch not yet consumed here, by input file.
    unconsumed: HashMap<String, HashSet<String>>,
    /// Records to remove, and when.
    removals: VecDeque<(Instant, String)>,
}

impl Gatherer {
    async fn run(mut self, mut calls: mpsc::UnboundedReceiver<Call>) {
        let far = || Instant::now() + Duration::from_secs(86_400);
        loop {
            let deadline = self.deadline.filter(|_| !self.pending.is_empty());
            let removal = self.removals.front().map(|(at, _)| *at);
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.add(call),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                    self.flush().await;
                }
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    if let Ok((ticket, finished)) = joined {
                        self.finished(ticket, finished);
                    }
                }
                () = tokio::time::sleep_until(removal.unwrap_or_else(far)), if removal.is_some() => {
                    self.remove_due().await;
                }
            }
            while self.pending.len() >= self.gathering.size || self.pending_bytes > MAX_BATCH_BYTES
            {
                self.flush().await;
            }
        }
    }

    fn add(&mut self, call: Call) {
        if let Some(waiting) = self.waiting.get_mut(&call.custom_id) {
            waiting.replies.push(call.reply);
            return;
        }
        self.waiting.insert(
            call.custom_id.clone(),
            Waiting {
                line: call.line,
                replies: vec![call.reply],
                retries: 0,
                ticket: None,
            },
        );
        self.gather(call.custom_id);
    }

    fn gather(&mut self, custom_id: String) {
        self.pending_bytes += self.waiting[&custom_id].line.len() + 1;
        self.pending.push(custom_id);
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.gathering.wait);
    }

    /// Hands the first calls gathered, at most `batch_size` of them and [`MAX_BATCH_BYTES`], to
    /// batches: those recorded in a batch wait for it, the others go in a new one.
    async fn flush(&mut self) {
        let mut take = 0;
        let mut bytes = 0;
        for custom_id in &self.pending {
            let line = self.waiting[custom_id].line.len() + 1;
            if take == self.gathering.size || (take > 0 && bytes + line > MAX_BATCH_BYTES) {
                break;
            }
            take += 1;
            bytes += line;
        }
        let group: Vec<String> = self.pending.drain(..take).collect();
        self.pending_bytes -= bytes;
        if self.pending.is_empty() {
            self.deadline = None;
        }
        let first_tries = group.iter().any(|id| self.waiting[id].retries == 0);
        let recorded = if first_tries {
            match self.context.records.all().await {
                Ok(records) => newest_records(records),
                Err(error) => {
                    for custom_id in group {
                        self.deliver(&custom_id, Err(error.clone()));
                    }
                    return;
                }
            }
        } else {
            HashMap::new()
        };
        let mut attach: HashMap<String, (Arc<Record>, Vec<String>)> = HashMap::new();
        let mut fresh = Vec::new();
        for custom_id in group {
            // A line sent again is in the record of the batch it failed in: it goes in a new one.
            let found = recorded
                .get(&custom_id)
                .filter(|_| self.waiting[&custom_id].retries == 0);
            match found {
                Some((file, _)) if self.attached.contains_key(file) => {
                    let ticket = self.attached[file];
                    self.assign(&custom_id, ticket);
                }
                Some((file, record)) => attach
                    .entry(file.clone())
                    .or_insert_with(|| (record.clone(), Vec::new()))
                    .1
                    .push(custom_id),
                None => fresh.push(custom_id),
            }
        }
        for (file, (record, custom_ids)) in attach {
            let ticket = self.spawn(Work::Attach(file.clone(), (*record).clone()));
            self.attached.insert(file, ticket);
            for custom_id in custom_ids {
                self.assign(&custom_id, ticket);
            }
        }
        if !fresh.is_empty() {
            let lines = fresh
                .iter()
                .map(|id| (id.clone(), self.waiting[id].line.clone()))
                .collect();
            let ticket = self.spawn(Work::Submit(lines));
            for custom_id in fresh {
                self.assign(&custom_id, ticket);
            }
        }
    }

    fn spawn(&mut self, work: Work) -> u64 {
        self.tickets += 1;
        let ticket = self.tickets;
        let context = self.context.clone();
        self.running
            .spawn(async move { (ticket, run::run(context, work).await) });
        ticket
    }

    fn assign(&mut self, custom_id: &str, ticket: u64) {
        if let Some(waiting) = self.waiting.get_mut(custom_id) {
            waiting.ticket = Some(ticket);
        }
    }

    /// Resolves the calls that waited for a finished batch, and schedules the removal of its
    /// record once every line of it was consumed.
    fn finished(&mut self, ticket: u64, finished: Finished) {
        let Finished {
            file,
            custom_ids,
            answers,
        } = finished;
        if let Some(file) = &file
            && self.attached.get(file) == Some(&ticket)
        {
            self.attached.remove(file);
        }
        let assigned: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.ticket == Some(ticket))
            .map(|(custom_id, _)| custom_id.clone())
            .collect();
        let mut answers = match answers {
            Ok(answers) => answers,
            Err(error) => {
                for custom_id in &assigned {
                    self.resolve(custom_id, Err(error.clone()));
                }
                return;
            }
        };
        for custom_id in &assigned {
            let answer = answers.remove(custom_id).unwrap_or_else(|| {
                Err(ModelError::Retryable {
                    message: format!("model {}: the batch lost the line", self.context.name),
                    retry_after: None,
                    unreachable: false,
                    overloaded: false,
                    attempts: 1,
                })
            });
            let reply = answer.and_then(|body| {
                self.context
                    .direct
                    .check(&body, self.context.api.shown())
                    .map(|()| body)
            });
            self.resolve(custom_id, reply);
        }
        let Some(file) = file else { return };
        let left = self
            .unconsumed
            .entry(file.clone())
            .or_insert_with(|| custom_ids.into_iter().collect());
        for custom_id in &assigned {
            left.remove(custom_id);
        }
        if left.is_empty() {
            self.unconsumed.remove(&file);
            self.removals
                .push_back((Instant::now() + RECORD_GRACE, file));
        }
    }

    /// Answers a call, or gathers it again for a later batch after a failure that may pass.
    fn resolve(&mut self, custom_id: &str, answer: Result<String, ModelError>) {
        let retries = self.waiting.get(custom_id).map_or(0, |w| w.retries);
        match answer {
            Err(ModelError::Retryable {
                unreachable: false, ..
            }) if retries < self.gathering.max_retries => {
                if let Some(waiting) = self.waiting.get_mut(custom_id) {
                    waiting.retries += 1;
                    waiting.ticket = None;
                }
                self.gather(custom_id.to_owned());
            }
            Err(ModelError::Retryable {
                message,
                retry_after,
                unreachable,
                overloaded,
                ..
            }) => self.deliver(
                custom_id,
                Err(ModelError::Retryable {
                    message,
                    retry_after,
                    unreachable,
                    overloaded,
                    attempts: retries + 1,
                }),
            ),
            answer => self.deliver(custom_id, answer),
        }
    }

    fn deliver(&mut self, custom_id: &str, answer: Result<String, ModelError>) {
        if let Some(waiting) = self.waiting.remove(custom_id) {
            for reply in waiting.replies {
                // A caller that gave up no longer listens.
                let _ = reply.send(answer.clone());
            }
        }
    }

    async fn remove_due(&mut self) {
        let now = Instant::now();
        while let Some((_, file)) = self.removals.front().filter(|(at, _)| *at <= now).cloned() {
            self.removals.pop_front();
            if let Err(error) = self.context.records.remove(&file).await {
                tracing::warn!(model = %self.context.name, %error, "cannot remove a batch record; it expires with the job");
            }
        }
    }
}

/// For each recorded call, the newest record holding it, as `(input file, record)`.
fn newest_records(records: Vec<(String, Record)>) -> HashMap<String, (String, Arc<Record>)> {
    let mut newest: HashMap<String, (String, Arc<Record>)> = HashMap::new();
    for (file, record) in records {
        let record = Arc::new(record);
        for custom_id in &record.custom_ids {
            let newer = newest
                .get(custom_id)
                .is_none_or(|(_, held)| held.created_ms < record.created_ms);
            if newer {
                newest.insert(custom_id.clone(), (file.clone(), record.clone()));
            }
        }
    }
    newest
}
