//! The job file: what to compute. Parsed strictly (unknown keys are errors naming the key),
//! converted into types that hold what was checked ([`JobSpec`]: one [`Pipeline`] variant with
//! its settings, one backend variant per model) before anything touches the network, and
//! fingerprinted so a resumed run can refuse a changed spec and say what changed.
//!
//! Layout: this file holds the spec and [`Job`] (reading a file, resolving its paths); `file`
//! the flat form the TOML is read into and the checks of its conversion; `input`, `pipeline`
//! and `models` the sections; `fingerprint` the semantic view and its hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod concurrency;
mod file;
mod fingerprint;
mod input;
pub mod keys;
mod models;
mod pipeline;
mod verdict;

pub use concurrency::{Concurrency, DEFAULT_AUTO_LIMIT};
pub use fingerprint::describe_changes;
pub use input::{ConversationField, InputSpec, Turns};
pub use models::{
    ANTHROPIC_URL, AnthropicSpec, Backend, BackendSpec, BatchSpec, CallPolicy, DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_WAIT_S, Endpoint, LocalSpec, MAX_BATCH_SIZE, MockSpec, ModelSpec, OpenaiSpec,
    Prices, Sampling,
};
pub use pipeline::{
    Candidates, CritiqueReviseSpec, DialogueSpec, JudgeMode, JudgeTemplate, PairwiseSpec, Pipeline,
    PipelineKind, SftMode,
};
pub use verdict::{MAX_VOTES, VerdictFormat, VerdictSpec};

/// A problem with the job file; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("{path}: cannot read job file: {source}")]
    Read {
        /// The job file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key.
    #[error("{path}: {message}")]
    Parse {
        /// The job file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// The TOML parsed but a value is not allowed.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The job file.
        path: PathBuf,
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A value the job file's types allow but the job does not: the field (dotted) and why. A
/// [`JobError::Invalid`] once the file is known; alone, the error of deserialising a spec from
/// elsewhere (a registry entry).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A checked job. Deserialising one runs the same checks as reading a job file; serialising
/// writes the file's flat form, so the JSON is what the file says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "file::JobFile", into = "file::JobFile")]
pub struct JobSpec {
    /// Job id, `[a-z0-9-]{1,64}`; names queues, Redis keys and the default output directory.
    pub name: String,
    /// Root of every random choice (principles, A/B order, sampling seeds).
    pub seed: u64,
    /// Output directory; default `out/<name>` under the current directory.
    pub output: Option<PathBuf>,
    /// The corpus and how to read it.
    pub input: InputSpec,
    /// The constitution file.
    pub constitution: ConstitutionSpec,
    /// The pipeline and its settings.
    pub pipeline: Pipeline,
    /// Models by the name the pipeline settings use; every name they use is here.
    pub models: BTreeMap<String, ModelSpec>,
    /// The licence of the output dataset, as a Hugging Face licence identifier
    /// (`cc-by-4.0`, `mit`, …); the dataset card says `other` without it. Not part of the
    /// fingerprint: it does not change the rows.
    pub license: Option<String>,
}

/// The constitution file and whether to use its demonstrations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstitutionSpec {
    /// HF JSON or cai TOML, relative to the job file.
    pub path: PathBuf,
    /// Prepend the constitution's demonstrations to critique and revision requests.
    #[serde(default = "default_true")]
    pub few_shot: bool,
}

pub(crate) fn default_true() -> bool {
    true
}

/// A job file read and checked, with every relative path resolved.
#[derive(Clone, Debug)]
pub struct Job {
    /// The spec as written, paths resolved.
    pub spec: JobSpec,
    /// The job file it came from.
    pub path: PathBuf,
}

impl Job {
    /// Reads, parses and checks a job file. Relative `input.path`, `constitution.path`, local
    /// models' `path` and `output` are taken from the job file's directory; the default output
    /// is `out/<name>`.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks job-file text; `path` is used for messages and to resolve paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, JobError> {
        let file: file::JobFile = toml::from_str(text).map_err(|error| JobError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        let mut spec =
            JobSpec::try_from(file).map_err(|SpecError { field, message }| JobError::Invalid {
                path: path.to_owned(),
                field,
                message,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        spec.input.path = base.join(&spec.input.path);
        spec.constitution.path = base.join(&spec.constitution.path);
        for model in spec.models.values_mut() {
            if let BackendSpec::Local(local) = &mut model.backend {
                local.path = base.join(&local.path);
            }
        }
        spec.output = Some(match spec.output.take() {
            Some(output) => base.join(output),
            None => Path::new("out").join(&spec.name),
        });
        Ok(Self {
            spec,
            path: path.to_owned(),
        })
    }

    /// The output directory.
    pub fn output_dir(&self) -> &Path {
        self.spec
            .output
            .as_deref()
            .expect("output resolved in Job::parse")
    }
}

impl JobSpec {
    /// Which pipeline the job runs.
    pub fn kind(&self) -> PipelineKind {
        self.pipeline.kind()
    }

    /// The samples a worker keeps in flight unless told otherwise: the most calls in flight any
    /// of the job's models allows (its `max_concurrency`, or for `"auto"` its
    /// `max_concurrency_limit`), so the model, not the runner, is the limit.
    pub fn samples_in_flight(&self) -> usize {
        self.models
            .values()
            .map(ModelSpec::calls_in_flight)
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "harmless-sl"
pipeline = "critique-revise"
seed = 42

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"
limit = 1000

[constitution]
path = "constitution.json"

[critique_revise]
model = "policy"
revisions = 4

[models.policy]
backend = "openai"
url = "http://127.0.0.1:8000/v1"
model = "mistral-7b-instruct"
api_key_env = "OPENAI_API_KEY"
"#;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(text, Path::new("jobs/job.toml"))
    }

    #[test]
    fn example_parses_with_defaults_and_resolved_paths() {
        let job = parse(EXAMPLE).unwrap();
        assert_eq!(job.spec.input.path, Path::new("jobs/prompts.jsonl"));
        assert_eq!(job.output_dir(), Path::new("out/harmless-sl"));
        let model = &job.spec.models["policy"];
        let BackendSpec::Openai(openai) = &model.backend else {
            panic!("an openai model: {model:?}");
        };
        assert_eq!(openai.endpoint, Endpoint::Chat);
        assert_eq!(model.sampling.top_logprobs, 20);
        assert!(job.spec.constitution.few_shot);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = EXAMPLE.replace("revisions = 4", "revison = 4");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("jobs/job.toml"), "{message}");
        assert!(message.contains("revison"), "{message}");
        assert!(message.contains("line 17"), "{message}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (EXAMPLE.replace("harmless-sl", "Harmless SL"), "name"),
            (
                EXAMPLE.replace("model = \"policy\"", "model = \"nope\""),
                "critique_revise.model",
            ),
            (
                EXAMPLE.replace("revisions = 4", "revisions = 0"),
                "critique_revise.revisions",
            ),
            (
                EXAMPLE.replace("url = \"http://127.0.0.1:8000/v1\"", ""),
                "models.policy",
            ),
        ];
        for (text, field) in cases {
            match parse(&text) {
                Err(JobError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn fingerprint_ignores_operations_and_names_semantic_changes() {
        let job = parse(EXAMPLE).unwrap();
        let faster = parse(&EXAMPLE.replace("limit = 1000", "limit = 5")).unwrap();
        assert_eq!(job.spec.fingerprint("c1"), faster.spec.fingerprint("c1"));
        assert_ne!(job.spec.fingerprint("c1"), job.spec.fingerprint("c2"));
        let changed = parse(&EXAMPLE.replace("revisions = 4", "revisions = 2")).unwrap();
        let changes = describe_changes(
            &job.spec.semantic_view("c1"),
            &changed.spec.semantic_view("c1"),
        );
        assert_eq!(changes, vec!["critique_revise.revisions: 4 → 2".to_owned()]);
    }

    #[test]
    fn max_concurrency_auto_is_operational_and_a_number_serialises_as_before() {
        let with = |lines: &str| EXAMPLE.replace("api_key_env", &format!("{lines}\napi_key_env"));
        let fixed = parse(&with("max_concurrency = 16")).unwrap();
        let json = serde_json::to_value(&fixed.spec).unwrap();
        let model = json["models"]["policy"].as_object().unwrap();
        assert_eq!(model["max_concurrency"], 16);
        assert!(!model.contains_key("max_concurrency_limit"), "{model:?}");
        let auto = parse(&with(
            "max_concurrency = \"auto\"\nmax_concurrency_limit = 32",
        ))
        .unwrap();
        let policy = &auto.spec.models["policy"].policy;
        assert_eq!(policy.max_concurrency, Concurrency::Auto { limit: 32 });
        assert_eq!(auto.spec.samples_in_flight(), 32);
        assert_eq!(fixed.spec.samples_in_flight(), 16);
        let back: JobSpec =
            serde_json::from_value(serde_json::to_value(&auto.spec).unwrap()).unwrap();
        assert_eq!(back, auto.spec);
        let default_limit = parse(&with("max_concurrency = \"auto\"")).unwrap();
        assert_eq!(
            default_limit.spec.models["policy"].policy.max_concurrency,
            Concurrency::Auto {
                limit: DEFAULT_AUTO_LIMIT
            }
        );
        // Neither key changes what the job computes: the fingerprint is the flat spec's.
        for job in [&fixed, &auto, &default_limit] {
            assert_eq!(
                job.spec.fingerprint("c1"),
                "f20517ef45f7729d5b198e3a5cf957ba3653ec416e944c0443c41079a09b570a"
            );
        }
        let (field, message) = invalid(&with("max_concurrency = 8\nmax_concurrency_limit = 32"));
        assert_eq!(field, "models.policy");
        assert!(message.contains("`max_concurrency_limit`"), "{message}");
        let (_, message) = invalid(&with(
            "max_concurrency = \"auto\"\nmax_concurrency_limit = 0",
        ));
        assert!(message.contains("`max_concurrency_limit`"), "{message}");
        let message = parse(&with("max_concurrency = \"fast\""))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("max_concurrency") && message.contains("\"auto\""),
            "{message}"
        );
    }

    #[test]
    fn batch_settings_are_operational_and_priced_at_half_by_default() {
        let plain = parse(&EXAMPLE.replace(
            "api_key_env",
            "price_in = 2.0\nprice_out = 6.0\napi_key_env",
        ))
        .unwrap();
        let json = serde_json::to_string(&plain.spec.models["policy"]).unwrap();
        assert!(!json.contains("batch"), "{json}");
        let batched = parse(&EXAMPLE.replace(
            "api_key_env",
            "price_in = 2.0\nprice_out = 6.0\nbatch = true\nbatch_size = 100\nbatch_wait_s = 5\napi_key_env",
        ))
        .unwrap();
        assert_eq!(plain.spec.fingerprint("c1"), batched.spec.fingerprint("c1"));
        assert_eq!(
            parse(EXAMPLE).unwrap().spec.fingerprint("c1"),
            batched.spec.fingerprint("c1")
        );
        let model = &batched.spec.models["policy"];
        assert_eq!(
            model.batch(),
            Some(&BatchSpec {
                size: 100,
                wait_s: 5,
                price_in: None,
                price_out: None
            })
        );
        assert_eq!(
            model.prices(),
            Prices {
                price_in: Some(1.0),
                price_out: Some(3.0),
                batch: true
            }
        );
        assert_eq!(model.calls_in_flight(), 200);
        assert!(!plain.spec.models["policy"].prices().batch);
        // The settings survive the round trip through the registry's JSON.
        let again: ModelSpec =
            serde_json::from_str(&serde_json::to_string(model).unwrap()).unwrap();
        assert_eq!(&again, model);
        let priced = parse(&EXAMPLE.replace(
            "api_key_env",
            "batch = true\nbatch_price_in = 0.7\napi_key_env",
        ))
        .unwrap();
        let prices = priced.spec.models["policy"].prices();
        assert_eq!((prices.price_in, prices.price_out), (Some(0.7), None));
    }

    #[test]
    fn batch_settings_are_refused_off_openai_and_without_batch() {
        let mock = PAIRWISE.replace("backend = \"mock\"", "backend = \"mock\"\nbatch = true");
        let without = EXAMPLE.replace("api_key_env", "batch_size = 10\napi_key_env");
        let zero = EXAMPLE.replace("api_key_env", "batch = true\nbatch_size = 0\napi_key_env");
        for (text, says) in [
            (mock, "`batch` is a setting of backend \"openai\""),
            (without, "`batch_size` is a setting of batch mode"),
            (zero, "`batch_size` must be between 1 and 50000"),
            (
                EXAMPLE.replace(
                    "url = \"http://127.0.0.1:8000/v1\"",
                    "url = [\"http://a:8000/v1\", \"http://b:8000/v1\"]\nbatch = true",
                ),
                "the Batch API of one server",
            ),
        ] {
            let message = parse(&text).unwrap_err().to_string();
            assert!(message.contains(says), "{message}");
        }
    }

    const PAIRWISE: &str = r#"
name = "harmless-rl"
pipeline = "pairwise"

[input]
path = "pairs.jsonl"
messages = "prompt"

[constitution]
path = "constitution.toml"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]

[models.feedback]
backend = "mock"
"#;

    /// The fingerprints these jobs had while the spec was one flat struct: the types must not
    /// move them, or every output directory written before would refuse to resume.
    #[test]
    fn fingerprints_are_those_of_the_flat_spec() {
        let generate = PAIRWISE.replace(
            "candidates = [\"chosen\", \"rejected\"]",
            "generate = { model = \"feedback\" }",
        );
        let fingerprints =
            [EXAMPLE, PAIRWISE, &generate].map(|text| parse(text).unwrap().spec.fingerprint("c1"));
        assert_eq!(
            fingerprints,
            [
                "f20517ef45f7729d5b198e3a5cf957ba3653ec416e944c0443c41079a09b570a",
                "b2cc1432ec4f8484bf9cd76e9d467e559d0e9bcdd12e8fc643e2bc1b1d989119",
                "771319b43ebdce4977c7398dbbbe6d9bad3886a865245a844220c66a791d2682",
            ]
        );
    }

    #[test]
    fn the_pipeline_holds_its_section_and_the_candidates_their_source() {
        let job = parse(EXAMPLE).unwrap();
        let Pipeline::CritiqueRevise(spec) = &job.spec.pipeline else {
            panic!("critique-revise: {:?}", job.spec.pipeline);
        };
        assert_eq!((spec.model.as_str(), spec.revisions), ("policy", 4));
        let pairs = parse(PAIRWISE).unwrap();
        let Pipeline::Pairwise(spec) = &pairs.spec.pipeline else {
            panic!("pairwise: {:?}", pairs.spec.pipeline);
        };
        assert_eq!(
            spec.candidates,
            Candidates::Corpus(["chosen".into(), "rejected".into()])
        );
        let generate = PAIRWISE.replace(
            "candidates = [\"chosen\", \"rejected\"]",
            "generate = { model = \"feedback\", n = 2 }",
        );
        let Pipeline::Pairwise(spec) = parse(&generate).unwrap().spec.pipeline else {
            panic!("pairwise");
        };
        assert_eq!(
            spec.candidates,
            Candidates::Generate {
                model: "feedback".into()
            }
        );
        // The section of the other pipeline is refused, as it was ignored before only by luck.
        let both = format!(
            "{EXAMPLE}\n[pairwise]\njudge = \"policy\"\ngenerate = {{ model = \"policy\" }}\n"
        );
        let (field, message) = invalid(&both);
        assert_eq!(field, "pairwise");
        assert!(message.contains("critique-revise"), "{message}");
    }

    #[test]
    fn a_setting_of_another_backend_is_refused_by_name() {
        let cases = [
            (
                PAIRWISE.replace(
                    "backend = \"mock\"",
                    "backend = \"mock\"\nurl = \"http://x/v1\"",
                ),
                "`url`",
                "\"openai\"",
            ),
            (
                PAIRWISE.replace(
                    "backend = \"mock\"",
                    "backend = \"mock\"\npath = \"m.gguf\"",
                ),
                "`path`",
                "\"local\"",
            ),
            (
                EXAMPLE.replace("api_key_env", "latency_ms = 5\napi_key_env"),
                "`latency_ms`",
                "\"mock\"",
            ),
            (
                PAIRWISE.replace(
                    "backend = \"mock\"",
                    "backend = \"local\"\npath = \"m.gguf\"\nendpoint = \"completions\"",
                ),
                "`endpoint`",
                "\"openai\"",
            ),
        ];
        for (text, key, owner) in cases {
            let (field, message) = invalid(&text);
            assert!(field.starts_with("models."), "{key}: {field}");
            assert!(
                message.contains(key) && message.contains(owner),
                "{key}: {message}"
            );
        }
        // Their defaults, as every serialised spec writes them, are not "set".
        let defaults = PAIRWISE.replace(
            "backend = \"mock\"",
            "backend = \"mock\"\nendpoint = \"chat\"\nlatency_ms = 0\nprefill = false",
        );
        assert!(parse(&defaults).is_ok());
    }

    #[test]
    fn a_spec_deserialises_through_the_same_checks_and_serialises_as_written() {
        for text in [EXAMPLE, PAIRWISE] {
            let spec = parse(text).unwrap().spec;
            let json = serde_json::to_value(&spec).unwrap();
            let back: JobSpec = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(back, spec);
            let file: file::JobFile = toml::from_str(text).unwrap();
            let mut flat = serde_json::to_value(file).unwrap();
            flat["input"]["path"] = json["input"]["path"].clone();
            flat["constitution"]["path"] = json["constitution"]["path"].clone();
            flat["output"] = json["output"].clone();
            assert_eq!(json, flat, "the JSON of a spec is the JSON of its file");
        }
        let mut json = serde_json::to_value(parse(EXAMPLE).unwrap().spec).unwrap();
        json["critique_revise"] = serde_json::Value::Null;
        let error = serde_json::from_value::<JobSpec>(json)
            .unwrap_err()
            .to_string();
        assert!(error.contains("[critique_revise]"), "{error}");
    }

    fn invalid(text: &str) -> (String, String) {
        match parse(text) {
            Err(JobError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn turns_default_to_whole_and_each_is_allowed_without_candidates() {
        assert_eq!(parse(EXAMPLE).unwrap().spec.input.turns, Turns::Whole);
        let each = EXAMPLE.replace("limit = 1000", "limit = 1000\nturns = \"each\"");
        assert_eq!(parse(&each).unwrap().spec.input.turns, Turns::Each);
        let transcript = each.replace("prompt = \"prompt\"", "transcript = \"conversation\"");
        assert_eq!(parse(&transcript).unwrap().spec.input.turns, Turns::Each);
        // Pairs sampled from a model answer each turn's conversation.
        let generate = PAIRWISE
            .replace(
                "messages = \"prompt\"",
                "messages = \"prompt\"\nturns = \"each\"",
            )
            .replace(
                "candidates = [\"chosen\", \"rejected\"]",
                "generate = { model = \"feedback\" }",
            );
        assert_eq!(parse(&generate).unwrap().spec.input.turns, Turns::Each);
        // TRL rows: `messages` and `candidates` together.
        let trl = parse(PAIRWISE).unwrap();
        assert_eq!(
            trl.spec.input.conversation_field(),
            Some(ConversationField::Messages("prompt".into()))
        );
    }

    #[test]
    fn each_is_refused_with_candidates_or_a_given_answer_and_unknown_values_are_errors() {
        let pairs = PAIRWISE.replace(
            "messages = \"prompt\"",
            "messages = \"prompt\"\nturns = \"each\"",
        );
        let (field, message) = invalid(&pairs);
        assert_eq!(field, "input.turns");
        assert!(message.contains("pairwise.candidates"), "{message}");
        let transcripts = pairs.replace("messages = \"prompt\"\n", "");
        assert_eq!(invalid(&transcripts).0, "input.turns");
        let initial = EXAMPLE
            .replace("limit = 1000", "turns = \"each\"")
            .replace("revisions = 4", "revisions = 4\ninitial = \"response\"");
        let (field, message) = invalid(&initial);
        assert_eq!(field, "input.turns");
        assert!(message.contains("critique_revise.initial"), "{message}");
        let unknown = EXAMPLE.replace("limit = 1000", "turns = \"all\"");
        match parse(&unknown) {
            Err(JobError::Parse { message, .. }) => {
                assert!(message.contains("unknown variant `all`"), "{message}");
                assert!(
                    message.contains("`whole`") && message.contains("`each`"),
                    "{message}"
                );
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn turns_whole_leaves_the_fingerprint_as_it_was() {
        let job = parse(EXAMPLE).unwrap();
        let view = job.spec.semantic_view("c1");
        assert!(view["input"].get("turns").is_none(), "{view}");
        let explicit = parse(&EXAMPLE.replace("limit = 1000", "turns = \"whole\"")).unwrap();
        assert_eq!(job.spec.fingerprint("c1"), explicit.spec.fingerprint("c1"));
        let each = parse(&EXAMPLE.replace("limit = 1000", "turns = \"each\"")).unwrap();
        let changes = describe_changes(&view, &each.spec.semantic_view("c1"));
        assert_eq!(changes, vec!["input.turns: (unset) → \"each\"".to_owned()]);
    }

    #[test]
    fn settings_left_off_leave_the_fingerprint_as_it_was() {
        let job = parse(EXAMPLE).unwrap();
        let view = job.spec.semantic_view("c1");
        assert!(
            view["critique_revise"].get("preferences").is_none(),
            "{view}"
        );
        assert!(view["models"]["policy"].get("prefill").is_none(), "{view}");
        let on =
            parse(&EXAMPLE.replace("revisions = 4", "revisions = 4\npreferences = true")).unwrap();
        let changes = describe_changes(&view, &on.spec.semantic_view("c1"));
        assert_eq!(
            changes,
            vec!["critique_revise.preferences: (unset) → true".to_owned()]
        );
    }

    #[test]
    fn verdict_mode_takes_votes_a_parser_and_a_template_and_only_it_does() {
        let verdict = |settings: &str| {
            PAIRWISE.replace(
                "candidates = [\"chosen\", \"rejected\"]",
                &format!("candidates = [\"chosen\", \"rejected\"]\nmode = \"verdict\"\n{settings}"),
            )
        };
        let job = parse(&verdict("votes = 5\njudge_template = \"prometheus2\"")).unwrap();
        let Pipeline::Pairwise(spec) = &job.spec.pipeline else {
            panic!("pairwise");
        };
        assert_eq!(
            spec.verdict,
            Some(VerdictSpec {
                votes: 5,
                format: VerdictFormat::Auto
            })
        );
        assert_eq!(spec.template, JudgeTemplate::Prometheus2);
        let view = job.spec.semantic_view("c1");
        assert_eq!(view["pairwise"]["verdict"], "auto");
        assert_eq!(view["pairwise"]["judge_template"], "prometheus2");
        // A spec round-trips through its JSON (the registry entry).
        let json = serde_json::to_string(&job.spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), job.spec);
        // Left off, none of the three keys is in the fingerprint.
        let plain = parse(PAIRWISE).unwrap().spec.semantic_view("c1");
        for key in ["votes", "verdict", "judge_template"] {
            assert!(plain["pairwise"].get(key).is_none(), "{plain}");
        }
        let cases = [
            (
                PAIRWISE.replace("judge = \"feedback\"", "judge = \"feedback\"\nvotes = 3"),
                "pairwise.votes",
                "only mode",
            ),
            (verdict("votes = 0"), "pairwise.votes", "between 1 and 64"),
            (
                verdict("verdict = \"([AB]\""),
                "pairwise.verdict",
                "not a regular expression",
            ),
            (
                verdict("verdict = \"Winner\""),
                "pairwise.verdict",
                "exactly one capture group",
            ),
            (
                PAIRWISE.replace(
                    "judge = \"feedback\"",
                    "judge = \"feedback\"\njudge_template = \"prometheus2\"",
                ),
                "pairwise.judge_template",
                "mode = \"verdict\"",
            ),
            (
                verdict("votes = 3").replace(
                    "backend = \"mock\"",
                    "backend = \"mock\"\ntemperature = 0.0",
                ),
                "pairwise.votes",
                "temperature 0",
            ),
        ];
        for (text, expected, says) in cases {
            let (field, message) = invalid(&text);
            assert_eq!(field, expected, "{message}");
            assert!(message.contains(says), "{message}");
        }
    }

    #[test]
    fn license_is_optional_checked_and_outside_the_fingerprint() {
        let job = parse(EXAMPLE).unwrap();
        assert_eq!(job.spec.license, None);
        let text = EXAMPLE.replace("seed = 42", "seed = 42\nlicense = \"cc-by-4.0\"");
        let licensed = parse(&text).unwrap();
        assert_eq!(licensed.spec.license.as_deref(), Some("cc-by-4.0"));
        assert_eq!(job.spec.fingerprint("c1"), licensed.spec.fingerprint("c1"));
        assert!(licensed.spec.semantic_view("c1").get("license").is_none());
        let (field, message) = invalid(&EXAMPLE.replace("seed = 42", "license = \"CC BY 4.0\""));
        assert_eq!(field, "license");
        assert!(message.contains("cc-by-4.0"), "{message}");
    }

    #[test]
    fn url_takes_a_list_of_replicas_and_one_url_is_written_as_before() {
        let one = parse(EXAMPLE).unwrap();
        let json = serde_json::to_value(&one.spec).unwrap();
        assert_eq!(json["models"]["policy"]["url"], "http://127.0.0.1:8000/v1");
        let policy = json["models"]["policy"].as_object().unwrap();
        assert!(!policy.contains_key("replicas_from_dns") && !policy.contains_key("dns_refresh_s"));
        // A list of one is the same job as the string.
        let listed = EXAMPLE.replace(
            "url = \"http://127.0.0.1:8000/v1\"",
            "url = [\"http://127.0.0.1:8000/v1\"]",
        );
        assert_eq!(parse(&listed).unwrap().spec, one.spec);

        let three = EXAMPLE.replace(
            "url = \"http://127.0.0.1:8000/v1\"",
            "url = [\"http://10.0.0.1:8000/v1\", \"http://10.0.0.2:8000/v1\", \"https://b/v1\"]",
        );
        let replicas = parse(&three).unwrap();
        let BackendSpec::Openai(openai) = &replicas.spec.models["policy"].backend else {
            panic!("an openai model");
        };
        assert_eq!(openai.urls.len(), 3);
        assert_eq!(openai.dns_refresh_s, None);
        let json = serde_json::to_value(&replicas.spec).unwrap();
        assert_eq!(json["models"]["policy"]["url"][2], "https://b/v1");
        let back: JobSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, replicas.spec);
        assert_eq!(
            replicas.spec.fingerprint("c1"),
            one.spec.fingerprint("c1"),
            "where the replicas are does not change what is computed"
        );
    }

    #[test]
    fn a_bad_list_of_urls_is_refused_naming_the_key_and_no_url() {
        let with = |urls: &str| {
            EXAMPLE.replace(
                "url = \"http://127.0.0.1:8000/v1\"",
                &format!("url = {urls}"),
            )
        };
        for (urls, expected) in [
            ("[]", "at least one"),
            (
                "[\"http://alice:hunter2@a/v1\", \"ftp://alice:hunter2@b/v1\"]",
                "URL 2 of the list must start with http:// or https://",
            ),
            (
                "[\"http://alice:hunter2@a/v1\", \"http://b/v1\", \"http://alice:hunter2@a/v1/\"]",
                "URLs 1 and 3 of the list are the same",
            ),
        ] {
            let (field, message) = invalid(&with(urls));
            assert_eq!(field, "models.policy", "{urls}");
            assert!(
                message.contains("`url`") && message.contains(expected),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
        match parse(&with("7")) {
            Err(JobError::Parse { message, .. }) => {
                assert!(message.contains("a URL or a list of URLs"), "{message}")
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn replicas_from_dns_is_operational_and_its_refresh_defaults_to_30_s() {
        let one = parse(EXAMPLE).unwrap();
        let dns = |lines: &str| EXAMPLE.replace("api_key_env", &format!("{lines}\napi_key_env"));
        let refresh = |text: &str| match &parse(text).unwrap().spec.models["policy"].backend {
            BackendSpec::Openai(openai) => openai.dns_refresh_s,
            other => panic!("an openai model: {other:?}"),
        };
        assert_eq!(refresh(EXAMPLE), None);
        assert_eq!(refresh(&dns("replicas_from_dns = true")), Some(30));
        let every_5 = dns("replicas_from_dns = true\ndns_refresh_s = 5");
        assert_eq!(refresh(&every_5), Some(5));
        for text in [dns("replicas_from_dns = true"), every_5] {
            let spec = parse(&text).unwrap().spec;
            assert_eq!(spec.fingerprint("c1"), one.spec.fingerprint("c1"));
            let back: JobSpec =
                serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
            assert_eq!(back, spec);
        }
        for (lines, expected) in [
            ("dns_refresh_s = 5", "needs `replicas_from_dns = true`"),
            ("replicas_from_dns = true\ndns_refresh_s = 0", "at least 1"),
        ] {
            let (field, message) = invalid(&dns(lines));
            assert_eq!(field, "models.policy");
            assert!(
                message.contains("`dns_refresh_s`") && message.contains(expected),
                "{message}"
            );
        }
        let mock = PAIRWISE.replace(
            "backend = \"mock\"",
            "backend = \"mock\"\nreplicas_from_dns = true",
        );
        let (_, message) = invalid(&mock);
        assert!(
            message.contains("`replicas_from_dns`") && message.contains("\"openai\""),
            "{message}"
        );
    }

    /// [`EXAMPLE`] as a dialogue job between `person` and `policy`, with `dialogue` as the
    /// section's keys.
    fn dialogue(dialogue: &str) -> String {
        EXAMPLE
            .replace("pipeline = \"critique-revise\"", "pipeline = \"dialogue\"")
            .replace(
                "[critique_revise]\nmodel = \"policy\"\nrevisions = 4",
                &format!("[dialogue]\n{dialogue}"),
            )
            + "[models.person]\nbackend = \"mock\"\n"
    }

    #[test]
    fn a_dialogue_section_is_checked_and_keeps_old_fingerprints_unchanged() {
        let job = parse(&dialogue("user = \"person\"\nassistant = \"policy\"")).unwrap();
        let Pipeline::Dialogue(spec) = &job.spec.pipeline else {
            panic!("dialogue: {:?}", job.spec.pipeline);
        };
        assert_eq!((spec.turns, spec.revisions), (3, 1));
        assert!(spec.persona.is_none() && spec.stop.is_none() && !spec.preferences);
        // A critique-revise spec's JSON gains no `dialogue` key, so its fingerprint holds.
        let old = serde_json::to_value(parse(EXAMPLE).unwrap().spec).unwrap();
        assert!(old.get("dialogue").is_none(), "{old}");

        let cases = [
            ("user = \"nobody\"\nassistant = \"policy\"", "dialogue.user"),
            (
                "user = \"person\"\nassistant = \"nobody\"",
                "dialogue.assistant",
            ),
            (
                "user = \"person\"\nassistant = \"policy\"\nturns = 0",
                "dialogue.turns",
            ),
            (
                "user = \"person\"\nassistant = \"policy\"\nrevisions = 17",
                "dialogue.revisions",
            ),
            (
                "user = \"person\"\nassistant = \"policy\"\nrevisions = 0\npreferences = true",
                "dialogue.preferences",
            ),
            (
                "user = \"person\"\nassistant = \"policy\"\nstop = \" \"",
                "dialogue.stop",
            ),
            (
                "user = \"person\"\nassistant = \"policy\"\npersona = \"\"",
                "dialogue.persona",
            ),
        ];
        for (keys, field) in cases {
            assert_eq!(invalid(&dialogue(keys)).0, field, "{keys}");
        }
        let each = dialogue("user = \"person\"\nassistant = \"policy\"")
            .replace("limit = 1000", "turns = \"each\"");
        let (field, message) = invalid(&each);
        assert_eq!(field, "input.turns");
        assert!(message.contains("first human turn"), "{message}");
        let missing = EXAMPLE.replace("pipeline = \"critique-revise\"", "pipeline = \"dialogue\"");
        let (field, message) = invalid(&missing);
        assert_eq!(field, "critique_revise", "{message}");
        let without = dialogue("user = \"person\"").replace("[dialogue]\nuser = \"person\"\n", "");
        let (field, message) = invalid(&without);
        assert_eq!(field, "dialogue");
        assert!(message.contains("needs a [dialogue] section"), "{message}");
    }
}
