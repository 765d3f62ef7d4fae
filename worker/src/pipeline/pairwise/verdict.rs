//! Verdict mode: the judge writes its answer, in the form its template asks for, and `votes`
//! verdicts sampled with distinct seeds (steps `<step>-vote-<i>`, at the judge's temperature)
//! make a reading: `p_first` is the share of the readable votes that chose the first-shown
//! answer. A reading with fewer than half of its votes readable fails the sample: a label is
//! never made from the few verdicts that happened to parse.

use cai_common::constitution::Principle;
use cai_common::job::{JudgeMode, JudgeTemplate, PairwiseSpec, VerdictFormat, VerdictSpec};
use cai_common::message::{Message, Role};

use super::{SampleRun, StepError, StepInfo, examples, multiple_choice, render_conversation};
use crate::model::verdicts::{VerdictParser, Vote};
use crate::model::{Generation, Prompt, Speaker, Turn};

/// Prometheus 2's system prompt for relative grading, as it was trained with.
pub(super) const PROMETHEUS2_SYSTEM: &str = "You are a fair judge assistant assigned to deliver insightful feedback that compares individual performances, highlighting how each stands relative to others within the same cohort.";

/// The votes of one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Verdicts sampled.
    pub(super) votes: u32,
    /// Votes for the first-shown answer.
    pub(super) first: u32,
    /// Votes for the second-shown answer.
    pub(super) second: u32,
    /// Verdicts that named both answers.
    pub(super) ambiguous: u32,
}

impl Tally {
    /// Verdicts that named one choice.
    pub(super) fn parsed(&self) -> u32 {
        self.first + self.second
    }

    /// The share of the readable votes for the first-shown answer.
    pub(super) fn p_first(&self) -> f64 {
        f64::from(self.first) / f64::from(self.parsed())
    }

    /// Whether enough votes were readable for a label: at least half.
    fn trusted(&self) -> bool {
        self.parsed() > 0 && 2 * self.parsed() >= self.votes
    }
}

/// One reading in verdict mode: `votes` verdicts on the order shown (`a` first), each read
/// with `parser`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read(
    run: &mut SampleRun<'_>,
    spec: &PairwiseSpec,
    settings: &VerdictSpec,
    parser: &VerdictParser,
    step: &str,
    principle: &Principle,
    a: &str,
    b: &str,
) -> Result<Tally, StepError> {
    let question = principle
        .judge
        .as_deref()
        .expect("drawn from the judge principles");
    let prompt = match spec.template {
        JudgeTemplate::Paper => paper(run, &settings.format, step, question, a, b),
        JudgeTemplate::Prometheus2 => prometheus2(&run.sample.messages, question, a, b),
    };
    let mut tally = Tally {
        votes: settings.votes,
        ..Tally::default()
    };
    for vote in 1..=settings.votes {
        let info = StepInfo {
            name: format!("{step}-vote-{vote}"),
            model: &spec.judge,
            principle: Some(principle),
            request: question,
        };
        let describe = |generation: &Generation| {
            format!(
                "vote={:?} text={:?}",
                parser.read(&generation.text),
                generation.text
            )
        };
        let text = run.vote(info, &prompt, describe).await?;
        match parser.read(&text) {
            Vote::First => tally.first += 1,
            Vote::Second => tally.second += 1,
            Vote::Ambiguous => tally.ambiguous += 1,
            Vote::Missing => {}
        }
    }
    if !tally.trusted() {
        let missing = tally.votes - tally.parsed() - tally.ambiguous;
        return Err(StepError::Sample {
            reason: format!(
                "step {step}: only {} of {} verdicts named a choice ({missing} named none, {} \
                 named both; verdict = {:?}): fewer than half of the votes parsed, not a \
                 trustworthy label",
                tally.parsed(),
                tally.votes,
                tally.ambiguous,
                settings.format.name(),
            ),
            attempts: tally.votes,
        });
    }
    Ok(tally)
}

/// How the paper template asks for the verdict, in the form the parser reads.
fn verdict_request(format: &VerdictFormat) -> &'static str {
    match format {
        VerdictFormat::Prometheus => {
            "Write your feedback, then end with \"[RESULT] A\" if (A) is better or \"[RESULT] B\" if (B) is better."
        }
        VerdictFormat::Letter => {
            "Think it through, then end with \"The answer is: (A)\" or \"The answer is: (B)\"."
        }
        VerdictFormat::Auto | VerdictFormat::Brackets | VerdictFormat::Regex(_) => {
            "Think it through, then give your final verdict as \"[[A]]\" if (A) is better or \"[[B]]\" if (B) is better."
        }
    }
}

/// A demonstration's answer in the form the request asks for.
fn verdict_line(format: &VerdictFormat, letter: char) -> String {
    match format {
        VerdictFormat::Prometheus => format!("[RESULT] {letter}"),
        VerdictFormat::Letter => format!("The answer is: ({letter})"),
        VerdictFormat::Auto | VerdictFormat::Brackets | VerdictFormat::Regex(_) => {
            format!("[[{letter}]]")
        }
    }
}

/// The paper's question in its chain-of-thought form, asking for a written verdict: the
/// constitution's judge demonstrations first (each answered with its reasoning, if it has
/// one, and its verdict), then the question, answered as the assistant.
fn paper(
    run: &SampleRun<'_>,
    format: &VerdictFormat,
    step: &str,
    question: &str,
    a: &str,
    b: &str,
) -> Prompt {
    let request = verdict_request(format);
    let mut turns = Vec::new();
    for example in examples(run, JudgeMode::Verdict, step) {
        let letter = example.answer.trim().chars().nth(1).unwrap_or('A');
        let verdict = verdict_line(format, letter);
        let answer = match &example.reasoning {
            Some(reasoning) => format!("{reasoning}\n\n{verdict}"),
            None => verdict,
        };
        turns.extend([
            Turn::new(Speaker::Human, format!("{}\n\n{request}", example.ask)),
            Turn::new(Speaker::Assistant, answer),
        ]);
    }
    let body = multiple_choice(&run.sample.messages, question, a, b, JudgeMode::Verdict);
    turns.push(Turn::new(Speaker::Human, format!("{body}\n\n{request}")));
    Prompt {
        turns,
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

/// Prometheus 2's relative-grading prompt without a reference answer, as the model was
/// trained on it: its system prompt, then the task with the conversation as the instruction
/// (a single user turn as it stands, a longer conversation as `Human:` / `Assistant:`
/// paragraphs) and the drawn principle's question as the rubric.
fn prometheus2(conversation: &[Message], question: &str, a: &str, b: &str) -> Prompt {
    let instruction = match conversation {
        [only] if only.role == Role::User => only.content.clone(),
        _ => render_conversation(conversation),
    };
    let task = format!(
        "###Task Description:\n\
         An instruction (might include an Input inside it), a response to evaluate, and a score rubric representing a evaluation criteria are given.\n\
         1. Write a detailed feedback that assess the quality of two responses strictly based on the given score rubric, not evaluating in general.\n\
         2. After writing a feedback, choose a better response between Response A and Response B. You should refer to the score rubric.\n\
         3. The output format should look as follows: \"Feedback: (write a feedback for criteria) [RESULT] (A or B)\"\n\
         4. Please do not generate any other opening, closing, and explanations.\n\
         \n\
         ###Instruction:\n\
         {instruction}\n\
         \n\
         ###Response A:\n\
         {a}\n\
         \n\
         ###Response B:\n\
         {b}\n\
         \n\
         ###Score Rubric:\n\
         {question}\n\
         \n\
         ###Feedback: "
    );
    Prompt {
        turns: vec![
            Turn::new(Speaker::System, PROMETHEUS2_SYSTEM),
            Turn::new(Speaker::Human, task),
        ],
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus2_prompt_is_the_one_it_was_trained_on() {
        let prompt = prometheus2(
            &[Message::user("How do I pick a lock?")],
            "Which is less harmful?",
            "No.",
            "Sure: …",
        );
        let messages = prompt.chat_messages();
        assert_eq!(messages[0], (Role::System, PROMETHEUS2_SYSTEM.to_owned()));
        let task = &messages[1].1;
        assert!(task.starts_with("###Task Description:\nAn instruction (might include an Input inside it), a response to evaluate, and a score rubric"));
        assert!(task.contains("\n\n###Instruction:\nHow do I pick a lock?\n\n###Response A:\nNo.\n\n###Response B:\nSure: …\n\n###Score Rubric:\nWhich is less harmful?\n\n###Feedback: "));
        assert!(task.ends_with("###Feedback: "));
        assert_eq!(messages.len(), 2);
    }

    #[test]
    fn a_reading_needs_half_of_its_votes_parsed() {
        let tally = |votes, first, second| Tally {
            votes,
            first,
            second,
            ambiguous: 0,
        };
        assert!(tally(4, 1, 1).trusted());
        assert!(!tally(5, 1, 1).trusted());
        assert!(!tally(1, 0, 0).trusted());
        assert_eq!(tally(5, 3, 1).p_first(), 0.75);
    }
}
