//! A checked plan for a run, made before anything touches the network: the job file, the
//! constitution, the fingerprint, and the output directory's identity (`job.json`), which is how a
//! re-run knows it resumes the same job and refuses to resume a changed one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cai_common::constitution::Constitution;
use cai_common::job::{Job, JobSpec, PipelineKind, describe_changes};
use cai_common::state::batch_log::BATCH_LOG_FILE;
use cai_common::state::step_log::STEP_LOG_FILE;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::card::{CARD_FILE, is_generated};
use crate::ledger::{DataFile, LEDGER_FILE};
use crate::report::REPORT_FILE;

/// The identity file of an output directory.
pub const JOB_FILE: &str = "job.json";
/// The end-of-run summary.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Why a plan could not be made; each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The job file.
    #[error(transparent)]
    Job(#[from] cai_common::job::JobError),
    /// The constitution.
    #[error(transparent)]
    Constitution(#[from] cai_common::constitution::ConstitutionError),
    /// The constitution cannot serve this pipeline.
    #[error("{path}: {message}")]
    Unsuitable {
        /// The constitution file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The output directory holds another job, or a changed spec of this one.
    #[error("{0}")]
    Changed(String),
    /// An I/O error on the output directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What `job.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobIdentity {
    /// Job name.
    pub name: String,
    /// Fingerprint of the semantic view.
    pub fingerprint: String,
    /// The semantic view itself, to say what changed.
    pub spec: Value,
    /// The corpus path, for `cai status`.
    pub input: PathBuf,
    /// The corpus line limit, for `cai status`.
    #[serde(default)]
    pub limit: Option<u64>,
    /// What the report and the dataset card say of the constitution; absent in output
    /// directories from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constitution: Option<ConstitutionSummary>,
}

/// The constitution as a reader of the output is told of it: no path, which may name the
/// machine's folders.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConstitutionSummary {
    /// The file's (or directory's) name.
    pub file: String,
    /// The principles the job's pipeline draws from.
    pub principles: usize,
}

/// A job ready to run.
#[derive(Clone)]
pub struct Plan {
    /// The job.
    pub job: Job,
    /// The constitution.
    pub constitution: Arc<Constitution>,
    /// The spec's fingerprint.
    pub fingerprint: String,
}

impl Plan {
    /// Loads and checks the job file and its constitution.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let job = Job::load(path)?;
        let constitution = Constitution::load(&job.spec.constitution.path)?;
        // Each pipeline draws from its own principles; refuse a constitution with none.
        let count = constitution.principles.len();
        let unsuitable = match job.spec.kind() {
            PipelineKind::Pairwise if constitution.judge_principles().is_empty() => Some(format!(
                "the pairwise pipeline draws from the principles with a judge question \
                 (`judge`), and none of the {count} principles has one; the HF JSON format has \
                 no judge questions: use a cai TOML constitution such as \
                 constitutions/default.toml, or a directory of Anthropic's prompt files with \
                 RLMadisonInstructions.json"
            )),
            kind @ (PipelineKind::CritiqueRevise | PipelineKind::Dialogue)
                if constitution.critique_principles().is_empty() =>
            {
                Some(format!(
                    "the {} pipeline draws from the principles with a critique and \
                     a revision request (`critique`, `revision`), and none of the {count} \
                     principles has them: use a constitution such as constitutions/default.toml, \
                     or a directory of Anthropic's prompt files with \
                     CritiqueRevisionInstructions.json",
                    kind.as_str()
                ))
            }
            _ => None,
        };
        if let Some(message) = unsuitable {
            return Err(PlanError::Unsuitable {
                path: job.spec.constitution.path.clone(),
                message,
            });
        }
        let fingerprint = job.spec.fingerprint(&constitution.hash);
        Ok(Self {
            job,
            constitution: Arc::new(constitution),
            fingerprint,
        })
    }

    /// The job spec.
    pub fn spec(&self) -> &JobSpec {
        &self.job.spec
    }

    /// This plan's identity record.
    pub fn identity(&self) -> JobIdentity {
        JobIdentity {
            name: self.spec().name.clone(),
            fingerprint: self.fingerprint.clone(),
            spec: self.spec().semantic_view(&self.constitution.hash),
            input: self.spec().input.path.clone(),
            limit: self.spec().input.limit,
            constitution: Some(ConstitutionSummary {
                file: self
                    .spec()
                    .constitution
                    .path
                    .file_name()
                    .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
                principles: if self.spec().kind().critiques() {
                    self.constitution.critique_principles().len()
                } else {
                    self.constitution.judge_principles().len()
                },
            }),
        }
    }

    /// Claims the output directory: a fresh one gets `job.json`; one holding the same job is
    /// resumed; one holding a changed spec is refused with what changed, unless `start_new`,
    /// which removes the previous run's files first.
    pub fn claim_output(&self, start_new: bool) -> Result<(), PlanError> {
        let dir = self.job.output_dir();
        let io = |path: PathBuf| move |source| PlanError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_owned()))?;
        let identity_path = dir.join(JOB_FILE);
        if start_new {
            // The dataset card goes only if cai wrote it: a README.md of the user's stays.
            let card = dir.join(CARD_FILE);
            let card = is_generated(&card).then_some(CARD_FILE);
            for name in DataFile::ALL
                .map(DataFile::name)
                .iter()
                .chain(&[
                    LEDGER_FILE,
                    MANIFEST_FILE,
                    JOB_FILE,
                    STEP_LOG_FILE,
                    BATCH_LOG_FILE,
                    REPORT_FILE,
                ])
                .chain(card.as_ref())
            {
                match std::fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(PlanError::Io {
                            path: dir.join(name),
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        } else if let Some(previous) = read_identity(dir)? {
            if previous.fingerprint != self.fingerprint {
                let changes = describe_changes(&previous.spec, &self.identity().spec);
                return Err(PlanError::Changed(format!(
                    "{}: holds job {:?} with a different spec; refusing to mix outputs. Changed:\n  {}\n\
                     Run with --new to start this job over in that directory, or set another `output`.",
                    identity_path.display(),
                    previous.name,
                    changes.join("\n  ")
                )));
            }
            return Ok(());
        }
        let text = serde_json::to_string_pretty(&self.identity()).expect("identity serialises");
        std::fs::write(&identity_path, text + "\n").map_err(io(identity_path.clone()))
    }
}

/// Reads `job.json` from an output directory, if there is one.
pub fn read_identity(dir: &Path) -> Result<Option<JobIdentity>, PlanError> {
    let path = dir.join(JOB_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| PlanError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PlanError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_new_removes_the_report_and_cai_s_card_but_not_another_readme() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.toml");
        let constitution =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../constitutions/default.toml");
        std::fs::write(
            &job,
            format!(
                "name = \"n\"\npipeline = \"critique-revise\"\noutput = \"out\"\n\
                 [input]\npath = \"c.jsonl\"\nprompt = \"p\"\n\
                 [constitution]\npath = {constitution:?}\n\
                 [critique_revise]\nmodel = \"m\"\n[models.m]\nbackend = \"mock\"\n"
            ),
        )
        .unwrap();
        let plan = Plan::load(&job).unwrap();
        let out = dir.path().join("out");
        plan.claim_output(false).unwrap();
        std::fs::write(out.join(REPORT_FILE), "report").unwrap();
        std::fs::write(
            out.join(CARD_FILE),
            "---\n# Dataset card written by cai: x\n---\n",
        )
        .unwrap();
        plan.claim_output(true).unwrap();
        assert!(!out.join(REPORT_FILE).exists());
        assert!(!out.join(CARD_FILE).exists());
        std::fs::write(out.join(CARD_FILE), "# notes\n").unwrap();
        plan.claim_output(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join(CARD_FILE)).unwrap(),
            "# notes\n"
        );
        assert!(read_identity(&out).unwrap().unwrap().constitution.is_some());
    }
}
