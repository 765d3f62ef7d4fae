//! One batch's life, from the lines handed over to what became of each: upload the input file,
//! record it, create the batch (or, for a batch recorded by another process, find it), record
//! it again, poll it until it is finished, and read its output and error files.
//!
//! Polling backs off: the first poll comes [`POLL_FIRST`] after the batch is created (or
//! attached), each next one 1.5 times later, at most [`POLL_MAX`] apart, since a batch may take
//! anything from seconds to its whole 24-hour window. A poll that fails is not a failed line:
//! polling goes on until `max_retries` polls in a row have failed, and then the batch's calls
//! are given back as an outage (not sent again: the batch may still answer them).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::super::ModelError;
use super::Direct;
use super::api::{BatchApi, BatchObject};
use super::lines::Answers;
use super::records::{Record, Records};

/// The wait before the first poll of a batch.
pub(super) const POLL_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two polls.
pub(super) const POLL_MAX: Duration = Duration::from_secs(60);
/// First backoff of an upload, create or download sent again.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest backoff of an upload, create or download sent again.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What every batch of a model needs.
pub(super) struct Context {
    /// The job's name for the model, for messages.
    pub(super) name: String,
    /// The direct backend, which reads replies.
    pub(super) direct: Direct,
    /// The server's Batch API.
    pub(super) api: BatchApi,
    /// The batch records of the job.
    pub(super) records: Records,
    /// The endpoint every line is for (OpenAI's `/v1/chat/completions` or `/v1/completions`;
    /// unused by Anthropic's, whose lines are all messages).
    pub(super) endpoint: &'static str,
    /// Requests of the Batch API sent again, and failed polls in a row, before giving up.
    pub(super) max_retries: u32,
}

/// A batch to wait for.
pub(super) enum Work {
    /// New lines, as `(custom_id, input line)`.
    Submit(Vec<(String, String)>),
    /// A batch another process (or an earlier run) recorded under its input file's id.
    Attach(String, Record),
}

/// What became of a batch.
pub(super) struct Finished {
    /// The input file's id, under which the batch is recorded, once uploaded.
    pub(super) file: Option<String>,
    /// Every line of the batch (not only those this process waits for).
    pub(super) custom_ids: Vec<String>,
    /// What became of each line; an error when the batch could not be waited for (every
    /// line's calls then fail with it, or are retried).
    pub(super) answers: Result<Answers, ModelError>,
}

/// Waits for a batch, submitting it first if it is new.
pub(super) async fn run(context: Arc<Context>, work: Work) -> Finished {
    match work {
        Work::Submit(lines) => {
            let custom_ids: Vec<String> = lines.iter().map(|(id, _)| id.clone()).collect();
            let prepared = again(&context, || context.api.prepare(&lines)).await;
            let file = match prepared {
                Ok(file) => file,
                Err(error) => {
                    return Finished {
                        file: None,
                        custom_ids,
                        answers: Err(error),
                    };
                }
            };
            let record = Record::uploaded(custom_ids.clone());
            let answers = wait(&context, &file, record, Some(&lines)).await;
            Finished {
                file: Some(file),
                custom_ids,
                answers,
            }
        }
        Work::Attach(file, record) => {
            let custom_ids = record.custom_ids.clone();
            let answers = wait(&context, &file, record, None).await;
            Finished {
                file: Some(file),
                custom_ids,
                answers,
            }
        }
    }
}

/// Records the batch under `file` (the input file's id, or the key the provider's API records
/// it under), creates it (unless the record names it, or, when recovering a record found
/// without its `lines`, the server already has it), polls it until it is finished and reads its
/// results.
async fn wait(
    context: &Context,
    file: &str,
    mut record: Record,
    lines: Option<&[(String, String)]>,
) -> Result<Answers, ModelError> {
    let batch = match record.batch_id.clone() {
        Some(batch) => batch,
        None => {
            if lines.is_some() {
                context.records.put(file, &record).await?;
            }
            let batch = create(context, file, &record, lines).await?;
            record.batch_id = Some(batch.id.clone());
            context.records.put(file, &record).await?;
            tracing::info!(
                model = %context.name,
                batch = %batch.id,
                lines = record.custom_ids.len(),
                "batch submitted"
            );
            batch.id
        }
    };
    let batch = poll(context, &batch).await.map_err(waited_for_later)?;
    let mut answers = Answers::new();
    for output in &batch.results {
        let text = again(context, || context.api.content(output))
            .await
            .map_err(waited_for_later)?;
        context.api.read(&context.name, &text, &mut answers);
    }
    let unanswered = ModelError::Retryable {
        message: format!(
            "model {}: batch {} ended {} without answering the line{}",
            context.name,
            batch.id,
            batch.status,
            batch
                .errors
                .as_ref()
                .map(|errors| format!(": {errors}"))
                .unwrap_or_default()
        ),
        retry_after: None,
        unreachable: false,
        overloaded: false,
        attempts: 1,
    };
    for custom_id in &record.custom_ids {
        answers
            .entry(custom_id.clone())
            .or_insert_with(|| Err(unanswered.clone()));
    }
    tracing::info!(model = %context.name, batch = %batch.id, status = %batch.status, "batch finished");
    Ok(answers)
}

/// A batch that exists but cannot be read now (its polls or its files keep failing) may still
/// answer its lines, so they must not go into another batch: the failure is an outage, which
/// gives the samples back to be run later, when their calls find the batch's record again.
fn waited_for_later(error: ModelError) -> ModelError {
    match error {
        ModelError::Retryable {
            message,
            retry_after,
            ..
        } => ModelError::Retryable {
            message: format!("{message} (the batch is waited for again later)"),
            retry_after,
            unreachable: true,
            overloaded: false,
            attempts: 1,
        },
        other => other,
    }
}

/// Creates the batch recorded under `file`. Before any create but a new batch's first, it looks
/// for the batch among the server's: a create whose reply was lost, or that a killed process
/// made without recording it, must not be made twice.
async fn create(
    context: &Context,
    file: &str,
    record: &Record,
    lines: Option<&[(String, String)]>,
) -> Result<BatchObject, ModelError> {
    let mut attempt = 0;
    let mut delay = RETRY_MIN;
    loop {
        if (lines.is_none() || attempt > 0)
            && let Some(batch) = context.api.find(file, record).await?
        {
            return Ok(batch);
        }
        match context.api.create(file, lines, context.endpoint).await {
            Err(ModelError::Retryable {
                unreachable: false, ..
            }) if attempt < context.max_retries => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            result => return result,
        }
    }
}

/// Polls batch `id` until it is finished (see the module documentation).
async fn poll(context: &Context, id: &str) -> Result<BatchObject, ModelError> {
    let mut delay = POLL_FIRST;
    let mut failures = 0;
    loop {
        tokio::time::sleep(delay).await;
        delay = delay.mul_f64(1.5).min(POLL_MAX);
        match context.api.get(id).await {
            Ok(batch) if batch.finished => return Ok(batch),
            Ok(_) => failures = 0,
            Err(error @ ModelError::Retryable { .. }) => {
                failures += 1;
                if failures > context.max_retries {
                    return Err(error);
                }
                tracing::warn!(model = %context.name, batch = id, %error, "polling a batch failed");
            }
            Err(error) => return Err(error),
        }
    }
}

/// Sends a request of the Batch API again after a transient failure, with backoff, up to
/// `max_retries` times; an endpoint that cannot be reached at all is given back at once.
async fn again<T, F, Fut>(context: &Context, request: F) -> Result<T, ModelError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ModelError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_max_times(context.max_retries as usize);
    request
        .retry(backoff)
        .when(|error| {
            matches!(
                error,
                ModelError::Retryable {
                    unreachable: false,
                    ..
                }
            )
        })
        .await
}
