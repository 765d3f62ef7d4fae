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
    let mut history: Vec<Turn> = vec![Turn::new(Speaker::Assistant, latest.clone())];
    let initial = latest.clone();
    let mut principle_ids = Vec::new();
    let mut rows = Vec::new();
    for round in 1..=spec.revisions {
        let principle = run.draw_principle(&format!("principle-{round}")).clone();
        principle_ids.push(principle.id.clone());
        let (critique_request, revision_request) = principle
            .critique_revision()
            .expect("drawn from the critique principles");
        let mut turns = few_shot.clone();
        turns.extend(conversation.iter().cloned());
        if spec.keep_history {
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
            name: format!("critique-{round}"),
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
            name: format!("revision-{round}"),
            model,
            principle: Some(&principle),
            request: revision_request,
        };
        let revision = run.generate(info, &revision_prompt).await?;

        if spec.keep_history {
            history.extend([
                Turn::new(Speaker::CritiqueRequest, critique_request),
                Turn::new(Speaker::Critique, critique),
                Turn::new(Speaker::RevisionRequest, revision_request),
                Turn::new(Speaker::Revision, revision.clone()),
            ]);
        }
        latest = revision;
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
