//! The Batch API as OpenAI documents it: `POST /v1/files` (a multipart upload with
//! `purpose=batch`), `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches`,
//! `GET /v1/batches/{id}` and `POST /v1/batches/{id}/cancel`.
//!
//! A batch is `in_progress` for [`BatchConfig::duration`] after it is created, then every line
//! is answered by the reply logic of the direct endpoints (so a line and a direct call of the
//! same body get the same answer) and the batch is `completed`: the 200 lines in its output
//! file, the others in its error file, each `{"id", "custom_id", "response": {"status_code",
//! "request_id", "body"}, "error"}`. A line the direct endpoint would refuse gets that 400.
//! [`BatchConfig::failed_lines`] answers a share of the lines with a 500 in the error file
//! instead (drawn per arrival of the body, as the direct faults are, so a line sent again can
//! succeed); [`BatchConfig::expire_first`] lets the first batches expire with only the first half
//! of their lines answered and the rest in the error file as `batch_expired`;
//! [`BatchConfig::create_reply_delay`] holds back the reply to a create, and
//! [`BatchConfig::failed_polls`] fails the first reads of batches. Every line
//! answered is in the request log with [`RecordedCall::batch`] set.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::calls::{RecordedCall, Shared};
use super::handler::{Api, answer, authorized, error, error_body, is_judge, unauthorized};
use super::multipart;
use super::reply::unit;

/// How batches behave; by default a batch completes at once and every line succeeds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchConfig {
    /// How long a batch stays `in_progress` before it is answered.
    pub duration: Duration,
    /// The probability that a line is answered with a 500 in the error file.
    pub failed_lines: f64,
    /// How many of the first batches created expire with half their lines answered.
    pub expire_first: usize,
    /// How long the reply to a batch's creation is held back after the batch is created (a
    /// client that gives up first has created it without knowing).
    pub create_reply_delay: Duration,
    /// How many of the first `GET /v1/batches/{id}` are answered with a 500.
    pub failed_polls: usize,
}

/// The files and batches the server holds.
#[derive(Default)]
pub(super) struct Batches {
    /// File id → content.
    files: BTreeMap<String, Vec<u8>>,
    /// Batch id → the batch.
    batches: BTreeMap<String, Batch>,
    /// Ids handed out so far.
    issued: u64,
    /// Files uploaded so far.
    uploaded: usize,
    /// Reads of a batch so far.
    polls: usize,
}

/// One batch.
struct Batch {
    /// The batch object, as `GET /v1/batches/{id}` returns it.
    object: Value,
    /// Cancelled by `POST /v1/batches/{id}/cancel`.
    cancel: CancellationToken,
}

impl Batches {
    fn issue(&mut self, prefix: &str) -> String {
        self.issued += 1;
        format!("{prefix}{:06}", self.issued)
    }

    /// How many batches are not yet answered.
    pub(super) fn in_progress(&self) -> usize {
        self.batches
            .values()
            .filter(|batch| matches!(batch.object["status"].as_str(), Some("in_progress")))
            .count()
    }

    /// How many files were uploaded.
    pub(super) fn uploaded(&self) -> usize {
        self.uploaded
    }

    /// How many batches were created.
    pub(super) fn created(&self) -> usize {
        self.batches.len()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// `POST /v1/files`: stores the `file` part of a multipart upload whose `purpose` is `batch`.
pub(super) async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&shared.config, &headers) {
        return unauthorized();
    }
    let parts = match multipart::parse(&headers, &body) {
        Ok(parts) => parts,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message, "invalid_request"),
    };
    if parts.get("purpose").map(Vec::as_slice) != Some(b"batch") {
        return error(
            StatusCode::BAD_REQUEST,
            "`purpose` must be `batch`",
            "invalid_request",
        );
    }
    let Some(content) = parts.get("file") else {
        return error(
            StatusCode::BAD_REQUEST,
            "`file` is required",
            "invalid_request",
        );
    };
    let mut batches = shared
        .batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let id = batches.issue("file-");
    batches.uploaded += 1;
    let bytes = content.len();
    batches.files.insert(id.clone(), content.clone());
    axum::Json(json!({
        "id": id,
        "object": "file",
        "bytes": bytes,
        "created_at": now(),
        "filename": "batch.jsonl",
        "purpose": "batch",
    }))
    .into_response()
}

/// `GET /v1/files/{id}/content`.
pub(super) async fn content(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&shared.config, &headers) {
        return unauthorized();
    }
    let batches = shared
        .batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match batches.files.get(&id) {
        Some(content) => content.clone().into_response(),
        None => not_found("file", &id),
    }
}

fn not_found(what: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("No such {what}: {id}"),
        "not_found",
    )
}

/// `POST /v1/batches`: `{"input_file_id", "endpoint", "completion_window": "24h"}`.
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&shared.config, &headers) {
        return unauthorized();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The body is not JSON.",
            "invalid_json",
        );
    };
    let endpoint = request["endpoint"].as_str().unwrap_or_default().to_owned();
    if !["/v1/chat/completions", "/v1/completions"].contains(&endpoint.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "`endpoint` must be /v1/chat/completions or /v1/completions",
            "invalid_request",
        );
    }
    if request["completion_window"] != "24h" {
        return error(
            StatusCode::BAD_REQUEST,
            "`completion_window` must be 24h",
            "invalid_request",
        );
    }
    let input = request["input_file_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cancel = CancellationToken::new();
    let (id, object, lines, expires) = {
        let mut batches = shared
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(lines) = batches.files.get(&input).cloned() else {
            return not_found("file", &input);
        };
        let expires = batches.created() < shared.config.batch.expire_first;
        let id = batches.issue("batch_");
        let created = now();
        let object = json!({
            "id": id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": null,
            "input_file_id": input,
            "completion_window": "24h",
            "status": "in_progress",
            "output_file_id": null,
            "error_file_id": null,
            "created_at": created,
            "in_progress_at": created,
            "expires_at": created + 24 * 3600,
            "finalizing_at": null,
            "completed_at": null,
            "failed_at": null,
            "expired_at": null,
            "cancelling_at": null,
            "cancelled_at": null,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": request.get("metadata").cloned().unwrap_or(Value::Null),
        });
        batches.batches.insert(
            id.clone(),
            Batch {
                object: object.clone(),
                cancel: cancel.clone(),
            },
        );
        (id, object, lines, expires)
    };
    let runner = shared.clone();
    tokio::spawn(async move {
        let cancelled = tokio::select! {
            () = tokio::time::sleep(runner.config.batch.duration) => false,
            () = cancel.cancelled() => true,
            () = runner.stopping.cancelled() => return,
        };
        runner.finish(&id, &lines, expires, cancelled);
    });
    tokio::time::sleep(shared.config.batch.create_reply_delay).await;
    axum::Json(object).into_response()
}

/// `GET /v1/batches`: every batch, newest first, in OpenAI's list object.
pub(super) async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared.config, &headers) {
        return unauthorized();
    }
    let batches = shared
        .batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let data: Vec<Value> = batches
        .batches
        .values()
        .rev()
        .map(|batch| batch.object.clone())
        .collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": false})).into_response()
}

/// `GET /v1/batches/{id}`.
pub(super) async fn get(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&shared.config, &headers) {
        return unauthorized();
    }
    let mut batches = shared
        .batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    batches.polls += 1;
    if batches.polls <= shared.config.batch.failed_polls {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
        );
    }
    match batches.batches.get(&id) {
        Some(batch) => axum::Json(batch.object.clone()).into_response(),
        None => not_found("batch", &id),
    }
}

/// `POST /v1/batches/{id}/cancel`: a batch in progress is `cancelling` until its runner stops
/// it, then `cancelled` with none of its lines answered.
pub(super) async fn cancel(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&shared.config, &headers) {
        return unauthorized();
    }
    let mut batches = shared
        .batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(batch) = batches.batches.get_mut(&id) else {
        return not_found("batch", &id);
    };
    if batch.object["status"] == "in_progress" {
        batch.object["status"] = "cancelling".into();
        batch.object["cancelling_at"] = now().into();
        batch.cancel.cancel();
    }
    axum::Json(batch.object.clone()).into_response()
}

/// What became of one line.
enum Line {
    /// Answered with this status and body.
    Answered(u16, Value),
    /// Not run: the batch expired or was cancelled first, with this error code.
    NotRun(&'static str, &'static str),
}

impl Shared {
    /// Answers the lines of batch `id` (the first half only if it `expires`, none if it was
    /// `cancelled`), writes its output and error files, and sets its final status.
    fn finish(&self, id: &str, lines: &[u8], expires: bool, cancelled: bool) {
        let lines: Vec<&[u8]> = lines
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect();
        let answered = if cancelled {
            0
        } else if expires {
            lines.len() / 2
        } else {
            lines.len()
        };
        let (mut output, mut errors) = (String::new(), String::new());
        let (mut completed, mut failed) = (0u64, 0u64);
        for (n, raw) in lines.iter().enumerate() {
            let line: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
            let outcome = if n >= answered {
                if cancelled {
                    Line::NotRun("batch_cancelled", "This request was cancelled.")
                } else {
                    Line::NotRun(
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    )
                }
            } else {
                self.run_line(&line)
            };
            let request_id = format!("req_{id}_{n}");
            let (entry, ok) = match outcome {
                Line::Answered(status, body) => (
                    json!({
                        "id": format!("batch_req_{id}_{n}"),
                        "custom_id": line["custom_id"],
                        "response": {"status_code": status, "request_id": request_id, "body": body},
                        "error": null,
                    }),
                    status == 200,
                ),
                Line::NotRun(code, message) => (
                    json!({
                        "id": format!("batch_req_{id}_{n}"),
                        "custom_id": line["custom_id"],
                        "response": null,
                        "error": {"code": code, "message": message},
                    }),
                    false,
                ),
            };
            let (file, count) = if ok {
                (&mut output, &mut completed)
            } else {
                (&mut errors, &mut failed)
            };
            file.push_str(&entry.to_string());
            file.push('\n');
            *count += 1;
        }
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let mut file = |content: String| -> Value {
            if content.is_empty() {
                return Value::Null;
            }
            let file = batches.issue("file-");
            batches.files.insert(file.clone(), content.into_bytes());
            file.into()
        };
        let (output, errors) = (file(output), file(errors));
        let Some(batch) = batches.batches.get_mut(id) else {
            return;
        };
        let object = &mut batch.object;
        let status = if cancelled {
            "cancelled"
        } else if expires {
            "expired"
        } else {
            "completed"
        };
        object["status"] = status.into();
        object[format!("{status}_at")] = now().into();
        if !cancelled {
            object["finalizing_at"] = now().into();
        }
        object["output_file_id"] = output;
        object["error_file_id"] = errors;
        object["request_counts"] =
            json!({"total": lines.len(), "completed": completed, "failed": failed});
    }

    /// Answers one line as the direct endpoint would (a failed line drawn as a 500), and
    /// records it.
    fn run_line(&self, line: &Value) -> Line {
        let api = match line["url"].as_str() {
            Some("/v1/chat/completions") => Api::Chat,
            Some("/v1/completions") => Api::Completions,
            _ => {
                return Line::Answered(
                    400,
                    error_body(
                        "`url` must be /v1/chat/completions or /v1/completions",
                        "invalid_request",
                    ),
                );
            }
        };
        let body = &line["body"];
        let raw = serde_json::to_vec(body).expect("JSON encodes");
        let fails = self.draw_line_failure(&raw);
        self.record(
            &raw,
            RecordedCall {
                endpoint: api.name(),
                body: body.clone(),
                judge: is_judge(body),
                fault: fails.then_some("500"),
                host: None,
                batch: true,
            },
        );
        if fails {
            return Line::Answered(
                500,
                error_body(
                    "The server had an error while processing your request.",
                    "server_error",
                ),
            );
        }
        match answer(&self.config, api, body) {
            Ok(reply) => {
                self.answered(&raw);
                Line::Answered(200, reply)
            }
            Err(message) => Line::Answered(400, error_body(&message, "invalid_request")),
        }
    }

    /// Whether this arrival of a line's body fails: a draw from SHA-256 of the body and its
    /// arrival as a batch line, below [`BatchConfig::failed_lines`].
    pub(super) fn draw_line_failure(&self, raw: &[u8]) -> bool {
        let share = self.config.batch.failed_lines;
        if share <= 0.0 {
            return false;
        }
        let body: [u8; 32] = Sha256::new()
            .chain_update(b"batch line")
            .chain_update(raw)
            .finalize()
            .into();
        let arrival = {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
            let count = arrivals.entry(body).or_default();
            *count += 1;
            *count - 1
        };
        let draw = unit(
            &Sha256::new()
                .chain_update(body)
                .chain_update(arrival.to_be_bytes())
                .finalize(),
        );
        draw < share
    }
}
