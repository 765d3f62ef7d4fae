//! The job file as written ([`JobFile`]: flat, every section optional, unknown keys refused by
//! the parser) and its conversion into a [`JobSpec`], which is where a job is checked: what the
//! conversion accepts, the types hold (a pipeline has its section, a model reference names a
//! model, a backend has its settings). A spec serialises back through [`JobFile`], so its JSON
//! is the file's, as fingerprints and registry entries need.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::models::ModelFile;
use super::pipeline::{GenerateFile, PairwiseFile};
use super::verdict::{MAX_VOTES, VerdictFormat, VerdictSpec};
use super::{
    Candidates, ConstitutionSpec, CritiqueReviseSpec, DialogueSpec, InputSpec, JobSpec, JudgeMode,
    JudgeTemplate, ModelSpec, PairwiseSpec, Pipeline, PipelineKind, SpecError, Turns,
};

/// The whole job file, as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobFile {
    pub(super) name: String,
    pub(super) pipeline: PipelineKind,
    #[serde(default)]
    pub(super) seed: u64,
    #[serde(default)]
    pub(super) output: Option<PathBuf>,
    pub(super) input: InputSpec,
    pub(super) constitution: ConstitutionSpec,
    #[serde(default)]
    pub(super) critique_revise: Option<CritiqueReviseSpec>,
    #[serde(default)]
    pub(super) pairwise: Option<PairwiseFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) dialogue: Option<DialogueSpec>,
    #[serde(default)]
    pub(super) models: BTreeMap<String, ModelFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) license: Option<String>,
}

fn fail<T>(field: &str, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        field: field.to_owned(),
        message: message.into(),
    })
}

impl TryFrom<JobFile> for JobSpec {
    type Error = SpecError;

    fn try_from(file: JobFile) -> Result<Self, SpecError> {
        check_name(&file.name)?;
        if let Some(license) = &file.license {
            check_license(license)?;
        }
        let mut models = BTreeMap::new();
        for (name, model) in file.models {
            let model = model
                .try_into()
                .or_else(|message| fail(&format!("models.{name}"), message))?;
            models.insert(name, model);
        }
        let sections = Sections {
            critique_revise: file.critique_revise,
            pairwise: file.pairwise,
            dialogue: file.dialogue,
        };
        let pipeline = pipeline(file.pipeline, sections, &|field, name| {
            model_exists(&models, field, name)
        })?;
        check_input(&file.input, &pipeline)?;
        check_judge(&pipeline, &models)?;
        Ok(Self {
            name: file.name,
            seed: file.seed,
            output: file.output,
            input: file.input,
            constitution: file.constitution,
            pipeline,
            models,
            license: file.license,
        })
    }
}

impl From<JobSpec> for JobFile {
    fn from(spec: JobSpec) -> Self {
        let kind = spec.pipeline.kind();
        let (critique_revise, pairwise, dialogue) = match spec.pipeline {
            Pipeline::CritiqueRevise(critique_revise) => (Some(critique_revise), None, None),
            Pipeline::Pairwise(pairwise) => (None, Some(pairwise.into()), None),
            Pipeline::Dialogue(dialogue) => (None, None, Some(dialogue)),
        };
        Self {
            name: spec.name,
            pipeline: kind,
            seed: spec.seed,
            output: spec.output,
            input: spec.input,
            constitution: spec.constitution,
            critique_revise,
            pairwise,
            dialogue,
            models: spec
                .models
                .into_iter()
                .map(|(name, model)| (name, model.into()))
                .collect(),
            license: spec.license,
        }
    }
}

impl From<PairwiseSpec> for PairwiseFile {
    fn from(spec: PairwiseSpec) -> Self {
        let (candidates, generate) = match spec.candidates {
            Candidates::Corpus(fields) => (Some(fields), None),
            Candidates::Generate { model } => (None, Some(GenerateFile { model, n: 2 })),
        };
        Self {
            judge: spec.judge,
            candidates,
            generate,
            principles_per_label: spec.principles_per_label,
            swap: spec.swap,
            mode: spec.mode,
            clamp: spec.clamp,
            min_letter_mass: spec.min_letter_mass,
            votes: spec.verdict.as_ref().map(|verdict| verdict.votes),
            verdict: spec.verdict.map(|verdict| verdict.format.name().to_owned()),
            judge_template: (spec.template != JudgeTemplate::Paper).then_some(spec.template),
        }
    }
}

fn check_name(name: &str) -> Result<(), SpecError> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if name.is_empty() || name.len() > 64 || !name.bytes().all(allowed) {
        return fail("name", format!("{name:?} must match [a-z0-9-]{{1,64}}"));
    }
    Ok(())
}

fn check_license(license: &str) -> Result<(), SpecError> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._+".contains(&b);
    if license.is_empty() || !license.bytes().all(allowed) {
        return fail(
            "license",
            format!(
                "{license:?} must be a Hugging Face licence identifier such as \"cc-by-4.0\" \
                 or \"other\" (lowercase letters, digits, `-`, `.`, `_`, `+`)"
            ),
        );
    }
    Ok(())
}

fn model_exists(
    models: &BTreeMap<String, super::ModelSpec>,
    field: &str,
    name: &str,
) -> Result<(), SpecError> {
    if models.contains_key(name) {
        return Ok(());
    }
    let known: Vec<&str> = models.keys().map(String::as_str).collect();
    fail(
        field,
        format!("no model named {name:?} in [models] (defined: {known:?})"),
    )
}

/// The pipelines' sections as written, each optional: the one the pipeline reads must be
/// there, and the others must not.
struct Sections {
    critique_revise: Option<CritiqueReviseSpec>,
    pairwise: Option<PairwiseFile>,
    dialogue: Option<DialogueSpec>,
}

/// The pipeline of `kind` from its section; a missing section, or another pipeline's, is an
/// error naming it.
fn pipeline(
    kind: PipelineKind,
    sections: Sections,
    model_exists: &dyn Fn(&str, &str) -> Result<(), SpecError>,
) -> Result<Pipeline, SpecError> {
    let present = [
        (
            PipelineKind::CritiqueRevise,
            sections.critique_revise.is_some(),
        ),
        (PipelineKind::Pairwise, sections.pairwise.is_some()),
        (PipelineKind::Dialogue, sections.dialogue.is_some()),
    ];
    if let Some((other, _)) = present.iter().find(|(k, there)| *there && *k != kind) {
        let section = other.section();
        return fail(
            section,
            format!(
                "pipeline \"{}\" does not read a [{section}] section: remove it, or run it as \
                 a job of its own",
                kind.as_str()
            ),
        );
    }
    let missing = || {
        fail(
            kind.section(),
            format!(
                "pipeline \"{}\" needs a [{}] section",
                kind.as_str(),
                kind.section()
            ),
        )
    };
    match kind {
        PipelineKind::CritiqueRevise => {
            let Some(section) = sections.critique_revise else {
                return missing();
            };
            model_exists("critique_revise.model", &section.model)?;
            if !(1..=64).contains(&section.revisions) {
                return fail("critique_revise.revisions", "must be between 1 and 64");
            }
            Ok(Pipeline::CritiqueRevise(section))
        }
        PipelineKind::Pairwise => {
            let Some(section) = sections.pairwise else {
                return missing();
            };
            Ok(Pipeline::Pairwise(pairwise_spec(section, model_exists)?))
        }
        PipelineKind::Dialogue => {
            let Some(section) = sections.dialogue else {
                return missing();
            };
            Ok(Pipeline::Dialogue(dialogue_spec(section, model_exists)?))
        }
    }
}

fn dialogue_spec(
    section: DialogueSpec,
    model_exists: &dyn Fn(&str, &str) -> Result<(), SpecError>,
) -> Result<DialogueSpec, SpecError> {
    model_exists("dialogue.user", &section.user)?;
    model_exists("dialogue.assistant", &section.assistant)?;
    if !(1..=32).contains(&section.turns) {
        return fail("dialogue.turns", "must be between 1 and 32");
    }
    if section.revisions > 16 {
        return fail("dialogue.revisions", "must be between 0 and 16");
    }
    if section.preferences && section.revisions == 0 {
        return fail(
            "dialogue.preferences",
            "needs at least one revision: with `revisions = 0` a turn has no revision to prefer",
        );
    }
    if section
        .persona
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        return fail(
            "dialogue.persona",
            "empty: leave it out for the built-in persona",
        );
    }
    if section.stop.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return fail(
            "dialogue.stop",
            "empty: an empty user turn already ends a conversation; leave it out",
        );
    }
    Ok(section)
}

fn pairwise_spec(
    section: PairwiseFile,
    model_exists: &dyn Fn(&str, &str) -> Result<(), SpecError>,
) -> Result<PairwiseSpec, SpecError> {
    model_exists("pairwise.judge", &section.judge)?;
    let verdict = verdict_spec(&section)?;
    let candidates = match (section.candidates, section.generate) {
        (Some(_), Some(_)) | (None, None) => {
            return fail(
                "pairwise",
                "set exactly one of `candidates` (two corpus fields) or `generate`",
            );
        }
        (Some([x, y]), None) if x == y => {
            return fail("pairwise.candidates", "the two fields must differ");
        }
        (Some(fields), None) => Candidates::Corpus(fields),
        (None, Some(generate)) => {
            model_exists("pairwise.generate.model", &generate.model)?;
            if generate.n != 2 {
                return fail("pairwise.generate.n", "must be 2");
            }
            Candidates::Generate {
                model: generate.model,
            }
        }
    };
    if !(1..=16).contains(&section.principles_per_label) {
        return fail("pairwise.principles_per_label", "must be between 1 and 16");
    }
    let [low, high] = section.clamp;
    if !(0.0..=0.5).contains(&low) || !(0.5..=1.0).contains(&high) {
        return fail(
            "pairwise.clamp",
            "must be a range around 0.5: [low, high] with 0 <= low <= 0.5 <= high <= 1",
        );
    }
    if !(0.0..1.0).contains(&section.min_letter_mass) {
        return fail("pairwise.min_letter_mass", "must be at least 0 and below 1");
    }
    let template = section.judge_template.unwrap_or(JudgeTemplate::Paper);
    if template == JudgeTemplate::Prometheus2 && section.mode != JudgeMode::Verdict {
        return fail(
            "pairwise.judge_template",
            "\"prometheus2\" is a judge that writes its verdict: use it with mode = \"verdict\"",
        );
    }
    Ok(PairwiseSpec {
        judge: section.judge,
        candidates,
        principles_per_label: section.principles_per_label,
        swap: section.swap,
        mode: section.mode,
        clamp: section.clamp,
        min_letter_mass: section.min_letter_mass,
        verdict,
        template,
    })
}

/// Verdict mode's settings, which only verdict mode takes.
fn verdict_spec(section: &PairwiseFile) -> Result<Option<VerdictSpec>, SpecError> {
    if section.mode != JudgeMode::Verdict {
        for (key, set) in [
            ("votes", section.votes.is_some()),
            ("verdict", section.verdict.is_some()),
        ] {
            if set {
                return fail(
                    &format!("pairwise.{key}"),
                    "only mode = \"verdict\" reads it",
                );
            }
        }
        return Ok(None);
    }
    let votes = section.votes.unwrap_or(1);
    if !(1..=MAX_VOTES).contains(&votes) {
        return fail(
            "pairwise.votes",
            format!("must be between 1 and {MAX_VOTES}"),
        );
    }
    let format = VerdictFormat::parse(section.verdict.as_deref().unwrap_or("auto"))
        .or_else(|message| fail("pairwise.verdict", message))?;
    Ok(Some(VerdictSpec { votes, format }))
}

/// What a pairwise job asks of its judge that the judge cannot give: log-probabilities from a
/// backend that returns none (a verdict judge only needs text); several votes sampled at
/// temperature 0, which repeat one verdict, so they would be paid for and say nothing more.
fn check_judge(pipeline: &Pipeline, models: &BTreeMap<String, ModelSpec>) -> Result<(), SpecError> {
    let Pipeline::Pairwise(pairwise) = pipeline else {
        return Ok(());
    };
    let backend = models[&pairwise.judge].backend.kind();
    if !backend.has_logprobs() && pairwise.mode != JudgeMode::Verdict {
        return fail(
            "pairwise.judge",
            format!(
                "model {:?} is served by backend {:?}, which returns no token log-probabilities, and \
                 mode {} reads the label from them: set mode = \"verdict\" to read the judge's \
                 written answer, or judge with a model of backend \"openai\", \"local\" or \"mock\"",
                pairwise.judge,
                backend.name(),
                serde_json::to_string(&pairwise.mode).expect("a mode serialises")
            ),
        );
    }
    if let Some(verdict) = &pairwise.verdict
        && verdict.votes > 1
        && models[&pairwise.judge].sampling.temperature == 0.0
    {
        return fail(
            "pairwise.votes",
            format!(
                "{} votes at the judge's temperature 0 would repeat one verdict: give \
                 models.{} a temperature above 0, or set votes = 1",
                verdict.votes, pairwise.judge
            ),
        );
    }
    Ok(())
}

/// The input settings that depend on the pipeline: which conversation field is needed, and
/// where `turns = "each"` cannot be honoured.
fn check_input(input: &InputSpec, pipeline: &Pipeline) -> Result<(), SpecError> {
    let pairs_from_corpus = matches!(
        pipeline,
        Pipeline::Pairwise(PairwiseSpec {
            candidates: Candidates::Corpus(_),
            ..
        })
    );
    let selectors = [&input.prompt, &input.messages, &input.transcript];
    match selectors.iter().filter(|s| s.is_some()).count() {
        0 if !pairs_from_corpus => {
            return fail(
                "input",
                "set one of `prompt`, `messages`, `transcript` (the conversation field)",
            );
        }
        0 | 1 => {}
        _ => {
            return fail(
                "input",
                "set only one of `prompt`, `messages`, `transcript`",
            );
        }
    }
    if input.turns == Turns::Each {
        if matches!(pipeline, Pipeline::Dialogue(_)) {
            return fail(
                "input.turns",
                "\"each\" cannot be used with pipeline \"dialogue\": a dialogue grows from the \
                 conversation's first human turn, and its models write the turns after it",
            );
        }
        if pairs_from_corpus {
            return fail(
                "input.turns",
                "\"each\" cannot be used with `pairwise.candidates`: a candidate pair answers \
                 the whole conversation, not each human turn (use `turns = \"whole\"`, or \
                 `pairwise.generate` to sample answers for every turn)",
            );
        }
        if let Pipeline::CritiqueRevise(CritiqueReviseSpec {
            initial: Some(_), ..
        }) = pipeline
        {
            return fail(
                "input.turns",
                "\"each\" cannot be used with `critique_revise.initial`: a given first answer \
                 answers the whole conversation, not each human turn",
            );
        }
    }
    if input.limit == Some(0) {
        return fail("input.limit", "must be at least 1");
    }
    Ok(())
}
