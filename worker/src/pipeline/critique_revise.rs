//! SL-CAI: an initial answer (generated, or given by the corpus), then `revisions` rounds; each
//! round draws a principle (uniformly, with replacement), asks for a critique of the latest
//! answer under it, then for a revision. By default each round restarts from the conversation
//! and the latest revision, so the context does not grow with the rounds.

use cai_common::constitution::Demonstration;
use cai_common::job::{CritiqueReviseSpec, SftMode};
use cai_common::message::Message;
use cai_common::result::{Output, RevisionPreferenceRow, SftRow};

use super::{SampleRun, StepError, StepInfo, conversation_turns};
use crate::model::{Prompt, Speaker, Turn};

/// The steps of a sample, in order: `initial` (unless given), then `critique-r`, `revision-r`.
pub(super) async fn run(
    run: &mut SampleRun<'_>,
    spec: &CritiqueReviseSpec,
) -> Result<Output, StepError> {
    let model = spec.model.as_str();
    let conversation = conversation_turns(&run.sample.messages);

    let mut latest = match &run.sample.initial {
        Some(initial) => initial.clone(),
        None => {
            let prompt = Prompt {
                turns: conversation.clone(),
                reply_as: Some(Speaker::Assistant),
                prefill: None,
            };
            let info = StepInfo {
                name: "initial".into(),
                model,
                principle: None,
                request: "",
            };
            run.generate(info, &prompt).await?
        }
    };

    let initial = latest.clone();
    let mut principle_ids = Vec::new();
    let mut rows = Vec::new();
    let rounds = revise(
        run,
        Revising {
            model,
            conversation: &conversation,
            answer: latest.clone(),
            rounds: spec.revisions,
            keep_history: spec.keep_history,
            step_prefix: "",
        },
    )
    .await?;
    for (index, done) in rounds.into_iter().enumerate() {
        let round = index as u32 + 1;
        principle_ids.push(done.principle_id);
        latest = done.revision;
        if spec.sft == SftMode::Every || round == spec.revisions {
            let mut messages = run.sample.messages.clone();
            messages.push(Message::assistant(latest.clone()));
            rows.push(SftRow {
                id: run.sample.id.clone(),
                messages,
                round,
            });
        }
    }
    let preference = spec.preferences.then(|| RevisionPreferenceRow {
        id: run.sample.id.clone(),
        prompt: run.sample.messages.clone(),
        chosen: vec![Message::assistant(latest)],
        rejected: vec![Message::assistant(initial)],
        principle_ids,
    });
    Ok(Output::Sft { rows, preference })
}

/// What [`revise`] works on: one answer to a conversation, and how its rounds are named.
pub(super) struct Revising<'a> {
    /// The model that critiques and revises.
    pub(super) model: &'a str,
    /// The conversation the answer answers, ending with the user's turn.
    pub(super) conversation: &'a [Turn],
    /// The answer round 1 critiques.
    pub(super) answer: String,
    /// Rounds of critique and revision.
    pub(super) rounds: u32,
    /// Keep earlier rounds in the context instead of restarting from the latest revision.
    pub(super) keep_history: bool,
    /// Put before every step and decision name (`""` for critique-revise's own names, so its
    /// steps and principle draws stay what they have always been).
    pub(super) step_prefix: &'a str,
}

/// One finished round: the principle drawn and the revision written under it.
pub(super) struct Round {
    pub(super) principle_id: String,
    pub(super) revision: String,
}

/// The critique → revision rounds of one answer, in order: each draws a principle (decision
/// `{prefix}principle-r`), asks for a critique of the latest answer under it
/// (`{prefix}critique-r`), then for a revision (`{prefix}revision-r`). The constitution's
/// demonstrations open every prompt when the job asks for few-shot prompting.
pub(super) async fn revise(
    run: &mut SampleRun<'_>,
    revising: Revising<'_>,
) -> Result<Vec<Round>, StepError> {
    let Revising {
        model,
        conversation,
        answer,
        rounds,
        keep_history,
        step_prefix: prefix,
    } = revising;
    let few_shot: Vec<Turn> = if run.ctx.spec.constitution.few_shot {
        run.ctx
            .constitution
            .demonstrations
            .iter()
            .flat_map(demonstration_turns)
            .collect()
    } else {
        Vec::new()
    };
    // With keep_history the rounds build on one growing context, which starts with the
    // answer that round 1 critiques.
    let mut history: Vec<Turn> = vec![Turn::new(Speaker::Assistant, answer.clone())];
    let mut latest = answer;
    let mut done = Vec::new();
    for round in 1..=rounds {
        let principle = run
            .draw_principle(&format!("{prefix}principle-{round}"))
            .clone();
        let (critique_request, revision_request) = principle
            .critique_revision()
            .expect("drawn from the critique principles");
        let mut turns = few_shot.clone();
        turns.extend(conversation.iter().cloned());
        if keep_history {
            turns.extend(history.iter().cloned());
        } else {
            turns.push(Turn::new(Speaker::Assistant, latest.clone()));
        }
        turns.push(Turn::new(Speaker::CritiqueRequest, critique_request));
        let critique_prompt = Prompt {
            turns,
            reply_as: Some(Speaker::Critique),
            prefill: None,
        };
        let info = StepInfo {
            name: format!("{prefix}critique-{round}"),
            model,
            principle: Some(&principle),
            request: critique_request,
        };
        let critique = run.generate(info, &critique_prompt).await?;

        let mut turns = critique_prompt.turns;
        turns.push(Turn::new(Speaker::Critique, critique.clone()));
        turns.push(Turn::new(Speaker::RevisionRequest, revision_request));
        let revision_prompt = Prompt {
            turns,
            reply_as: Some(Speaker::Revision),
            prefill: None,
        };
        let info = StepInfo {
            name: format!("{prefix}revision-{round}"),
            model,
            principle: Some(&principle),
            request: revision_request,
        };
        let revision = run.generate(info, &revision_prompt).await?;

        if keep_history {
            history.extend([
                Turn::new(Speaker::CritiqueRequest, critique_request),
                Turn::new(Speaker::Critique, critique),
                Turn::new(Speaker::RevisionRequest, revision_request),
                Turn::new(Speaker::Revision, revision.clone()),
            ]);
        }
        latest = revision.clone();
        done.push(Round {
            principle_id: principle.id.clone(),
            revision,
        });
    }
    Ok(done)
}

/// A demonstration as the turns of one worked round: its whole conversation, then critique
/// request, critique, revision request and revision.
fn demonstration_turns(demo: &Demonstration) -> Vec<Turn> {
    conversation_turns(&demo.conversation)
        .into_iter()
        .chain([
            Turn::new(Speaker::CritiqueRequest, demo.critique_request.clone()),
            Turn::new(Speaker::Critique, demo.critique.clone()),
            Turn::new(Speaker::RevisionRequest, demo.revision_request.clone()),
            Turn::new(Speaker::Revision, demo.revision.clone()),
        ])
        .collect()
}
