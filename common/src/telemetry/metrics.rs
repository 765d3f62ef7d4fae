//! The process's Prometheus metrics: one registry, families labelled by job (and model), updated
//! where the events happen and rendered in the text exposition format for `/metrics`.
//!
//! The registry is process-wide and created once on first use: every worker loop and coordinator
//! of the process records into the same families, and the listener renders them all.

use std::collections::HashMap;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a per-job series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
}

/// Labels of a finished sample (worker side): `outcome` is `done` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SampleLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
    /// `done` or `failed`.
    pub outcome: &'static str,
}

/// Labels of a model call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
    /// The model's name in the job file.
    pub model: String,
    /// [`CallOutcome::as_str`].
    pub outcome: &'static str,
}

/// Labels of a per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
    /// The model's name in the job file.
    pub model: String,
}

/// Labels of a token counter: `direction` is `in` (prompt) or `out` (completion).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
    /// The model's name in the job file.
    pub model: String,
    /// `in` or `out`.
    pub direction: &'static str,
}

/// Labels of the model client layer's series (retries, the concurrency limit). The client layer
/// does not know the job, only the model's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// The model's name in the job file.
    pub model: String,
}

/// Labels of a per-replica series. Like [`ClientLabels`], without the job: a model's replicas
/// serve every job that names the model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// The model's name in the job file.
    pub model: String,
    /// The replica's base URL without secrets (`openai::redact`); a replica found by DNS shows
    /// its address in place of the name.
    pub replica: String,
}

/// Labels of a per-replica call counter: `outcome` is `answered`, `failed` (a 5xx, a timeout, a
/// cut-off reply) or `refused` (no connection).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaCallLabels {
    /// The model's name in the job file.
    pub model: String,
    /// As in [`ReplicaLabels`].
    pub replica: String,
    /// `answered`, `failed` or `refused`.
    pub outcome: &'static str,
}

/// Labels of a queue gauge: `queue` is `tasks`, `results` or `dead`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
    /// `tasks`, `results` or `dead`.
    pub queue: &'static str,
}

/// Labels of the coordinator's line counter: `status` is `read`, `done`, `failed`, `rejected`
/// or `duplicate`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineLabels {
    /// The job name (not `job`, which Prometheus gives every scraped series for its own use).
    pub cai_job: String,
    /// What became of the line.
    pub status: &'static str,
}

/// How a model call of a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The model answered.
    Ok,
    /// Served from the step cache: no call was made (a resumed sample).
    Cached,
    /// Failed for this sample after its retries (the sample is recorded as failed).
    Failed,
    /// The endpoint was unreachable: the sample goes back to the queue.
    Unreachable,
    /// A job-fatal error (refused key, unknown model).
    Fatal,
}

impl CallOutcome {
    /// Every outcome, in [`CallOutcome::index`] order.
    pub const ALL: [CallOutcome; 5] = [
        CallOutcome::Ok,
        CallOutcome::Cached,
        CallOutcome::Failed,
        CallOutcome::Unreachable,
        CallOutcome::Fatal,
    ];

    /// The position in [`CallOutcome::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Cached => "cached",
            CallOutcome::Failed => "failed",
            CallOutcome::Unreachable => "unreachable",
            CallOutcome::Fatal => "fatal",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric cai exports, by family.
pub struct Metrics {
    registry: Registry,
    /// `cai_samples_total{job,outcome}`: samples a worker of this process finished.
    pub samples: Family<SampleLabels, Counter>,
    /// `cai_model_calls_total{job,model,outcome}`: model calls by outcome.
    pub model_calls: Family<CallLabels, Counter>,
    /// `cai_model_call_duration_seconds{job,model}`: latency of the calls that reached a model
    /// (retries included), cached steps left out.
    pub model_latency: HistogramFamily<ModelLabels>,
    /// `cai_model_tokens_total{job,model,direction}`: prompt and completion tokens.
    pub tokens: Family<TokenLabels, Counter>,
    /// `cai_model_retries_total{model}`: attempts retried after a transient failure.
    pub retries: Family<ClientLabels, Counter>,
    /// `cai_model_concurrency_limit{model}`: attempts a model may have in flight from this
    /// process now (a fixed `max_concurrency`, or where `"auto"` has taken it).
    pub concurrency_limit: Family<ClientLabels, Gauge>,
    /// `cai_replica_calls_total{model,replica,outcome}`: attempts per replica of an `openai`
    /// model, by how they went.
    pub replica_calls: Family<ReplicaCallLabels, Counter>,
    /// `cai_replica_call_duration_seconds{model,replica}`: latency of the attempts a replica
    /// answered or failed (not of refused connections).
    pub replica_latency: HistogramFamily<ReplicaLabels>,
    /// `cai_replica_ejections_total{model,replica}`: times a replica was ejected after failing.
    pub replica_ejections: Family<ReplicaLabels, Counter>,
    /// `cai_worker_pauses_total{job}`: pauses after finding a model endpoint unreachable.
    pub pauses: Family<JobLabels, Counter>,
    /// `cai_tasks_in_flight{job}`: tasks a worker of this process is running.
    pub tasks_in_flight: Family<JobLabels, Gauge>,
    /// `cai_queue_depth{job,queue}`: ready messages in the job's queues (coordinator).
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// `cai_tasks_outstanding{job}`: tasks published and not yet collected (coordinator).
    pub tasks_outstanding: Family<JobLabels, Gauge>,
    /// `cai_lines_total{job,status}`: corpus lines by what became of them (coordinator).
    pub lines: Family<LineLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut metrics = Self {
            samples: Family::default(),
            model_calls: Family::default(),
            model_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 18))
            }),
            tokens: Family::default(),
            retries: Family::default(),
            concurrency_limit: Family::default(),
            replica_calls: Family::default(),
            replica_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 18))
            }),
            replica_ejections: Family::default(),
            pauses: Family::default(),
            tasks_in_flight: Family::default(),
            queue_depth: Family::default(),
            tasks_outstanding: Family::default(),
            lines: Family::default(),
            registry: Registry::with_prefix("cai"),
        };
        metrics.registry.register(
            "samples",
            "Samples finished by this process's workers",
            metrics.samples.clone(),
        );
        metrics.registry.register(
            "model_calls",
            "Model calls by outcome",
            metrics.model_calls.clone(),
        );
        metrics.registry.register(
            "model_call_duration_seconds",
            "Latency of model calls, retries included",
            metrics.model_latency.clone(),
        );
        metrics.registry.register(
            "model_tokens",
            "Prompt (in) and completion (out) tokens",
            metrics.tokens.clone(),
        );
        metrics.registry.register(
            "model_retries",
            "Model call attempts retried after a transient failure",
            metrics.retries.clone(),
        );
        metrics.registry.register(
            "model_concurrency_limit",
            "Attempts a model may have in flight from this process",
            metrics.concurrency_limit.clone(),
        );
        metrics.registry.register(
            "replica_calls",
            "Attempts per replica of a model, by how they went",
            metrics.replica_calls.clone(),
        );
        metrics.registry.register(
            "replica_call_duration_seconds",
            "Latency of the attempts a replica answered or failed",
            metrics.replica_latency.clone(),
        );
        metrics.registry.register(
            "replica_ejections",
            "Times a replica was ejected after failing",
            metrics.replica_ejections.clone(),
        );
        metrics.registry.register(
            "worker_pauses",
            "Pauses after finding a model endpoint unreachable",
            metrics.pauses.clone(),
        );
        metrics.registry.register(
            "tasks_in_flight",
            "Tasks this process's workers are running",
            metrics.tasks_in_flight.clone(),
        );
        metrics.registry.register(
            "queue_depth",
            "Messages ready in the job's queues",
            metrics.queue_depth.clone(),
        );
        metrics.registry.register(
            "tasks_outstanding",
            "Tasks published and not yet collected",
            metrics.tasks_outstanding.clone(),
        );
        metrics.registry.register(
            "lines",
            "Corpus lines by what became of them",
            metrics.lines.clone(),
        );
        metrics
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The handles of `job`'s series for its `models`, created now (at zero) so recording
    /// is only atomic increments.
    pub fn job<'a>(&self, job: &str, models: impl IntoIterator<Item = &'a str>) -> JobMetrics {
        let labels = JobLabels {
            cai_job: job.to_owned(),
        };
        let sample = |outcome| {
            self.samples
                .get_or_create(&SampleLabels {
                    cai_job: job.to_owned(),
                    outcome,
                })
                .clone()
        };
        let models = models
            .into_iter()
            .map(|model| {
                let call = |outcome: CallOutcome| {
                    self.model_calls
                        .get_or_create(&CallLabels {
                            cai_job: job.to_owned(),
                            model: model.to_owned(),
                            outcome: outcome.as_str(),
                        })
                        .clone()
                };
                let tokens = |direction| {
                    self.tokens
                        .get_or_create(&TokenLabels {
                            cai_job: job.to_owned(),
                            model: model.to_owned(),
                            direction,
                        })
                        .clone()
                };
                let handles = ModelMetrics {
                    calls: CallOutcome::ALL.map(call),
                    latency: self
                        .model_latency
                        .get_or_create(&ModelLabels {
                            cai_job: job.to_owned(),
                            model: model.to_owned(),
                        })
                        .clone(),
                    tokens_in: tokens("in"),
                    tokens_out: tokens("out"),
                };
                (model.to_owned(), handles)
            })
            .collect();
        JobMetrics {
            done: sample("done"),
            failed: sample("failed"),
            pauses: self.pauses.get_or_create(&labels).clone(),
            tasks_in_flight: self.tasks_in_flight.get_or_create(&labels).clone(),
            models,
        }
    }
}

/// One job's series on a worker, resolved once (see [`Metrics::job`]).
#[derive(Clone, Debug)]
pub struct JobMetrics {
    done: Counter,
    failed: Counter,
    pauses: Counter,
    tasks_in_flight: Gauge,
    models: HashMap<String, ModelMetrics>,
}

/// One model's series of a job.
#[derive(Clone, Debug)]
struct ModelMetrics {
    /// Indexed by [`CallOutcome::index`].
    calls: [Counter; 5],
    latency: Histogram,
    tokens_in: Counter,
    tokens_out: Counter,
}

impl JobMetrics {
    /// Counts a finished sample.
    pub fn record_sample(&self, done: bool) {
        if done { &self.done } else { &self.failed }.inc();
    }

    /// Counts a model call of `model`: its outcome, its latency if it reached the model, and its
    /// tokens. A model the job does not name is ignored.
    pub fn record_call(
        &self,
        model: &str,
        outcome: CallOutcome,
        latency: Option<std::time::Duration>,
        tokens: (u64, u64),
    ) {
        let Some(series) = self.models.get(model) else {
            return;
        };
        series.calls[outcome.index()].inc();
        if let Some(latency) = latency {
            series.latency.observe(latency.as_secs_f64());
        }
        series.tokens_in.inc_by(tokens.0);
        series.tokens_out.inc_by(tokens.1);
    }

    /// Counts a pause after an unreachable endpoint.
    pub fn record_pause(&self) {
        self.pauses.inc();
    }

    /// The gauge of tasks in flight.
    pub fn tasks_in_flight(&self) -> &Gauge {
        &self.tasks_in_flight
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_values_with_the_cai_prefix() {
        let metrics = Metrics::new();
        let job = metrics.job("j", ["policy"]);
        job.record_call(
            "policy",
            CallOutcome::Ok,
            Some(std::time::Duration::from_millis(3)),
            (10, 4),
        );
        job.record_call("policy", CallOutcome::Cached, None, (0, 0));
        job.record_sample(true);
        metrics
            .concurrency_limit
            .get_or_create(&ClientLabels {
                model: "policy".into(),
            })
            .set(12);
        let text = metrics.render();
        for line in [
            "cai_model_calls_total{cai_job=\"j\",model=\"policy\",outcome=\"ok\"} 1",
            "cai_model_calls_total{cai_job=\"j\",model=\"policy\",outcome=\"cached\"} 1",
            "cai_model_calls_total{cai_job=\"j\",model=\"policy\",outcome=\"fatal\"} 0",
            "cai_model_tokens_total{cai_job=\"j\",model=\"policy\",direction=\"in\"} 10",
            "cai_model_tokens_total{cai_job=\"j\",model=\"policy\",direction=\"out\"} 4",
            "cai_model_call_duration_seconds_count{cai_job=\"j\",model=\"policy\"} 1",
            "cai_samples_total{cai_job=\"j\",outcome=\"done\"} 1",
            "cai_samples_total{cai_job=\"j\",outcome=\"failed\"} 0",
            "cai_model_concurrency_limit{model=\"policy\"} 12",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
