//! A conversation's samples with `input.turns = "each"`: one per user turn, bounded by
//! [`MAX_TURN_SAMPLES_BYTES`] for the line.

use cai_common::message::{Message, Role};
use cai_common::sample::Sample;

use super::line::{Bad, bad};
use super::{MAX_TURN_SAMPLES_BYTES, MESSAGE_OVERHEAD};

/// The samples of a conversation read with `turns = "each"`: one per user turn, holding
/// everything up to and including it. Their ids are the line's id (the `input.id` value, else
/// the content key of the last sample, which is the key `"whole"` gives the line when it ends
/// with a user turn) with `#<n>` appended, n counting the user turns from 1. `field` is the
/// conversation field, named when the line is refused.
pub(super) fn turn_samples(
    field: &str,
    id: Option<&str>,
    line: u64,
    messages: &[Message],
) -> Result<Vec<Sample>, Bad> {
    let (mut ends, mut held, mut cost) = (Vec::new(), 0usize, 0usize);
    for (index, message) in messages.iter().enumerate() {
        held = held.saturating_add(message.content.len() + MESSAGE_OVERHEAD);
        if message.role == Role::User {
            ends.push(index + 1);
            cost = cost.saturating_add(held);
        }
    }
    if ends.is_empty() {
        return Err(bad(field, "no user turn"));
    }
    if cost > MAX_TURN_SAMPLES_BYTES {
        return Err(bad(
            field,
            format!(
                "its {} human turns make {:.1} MiB of samples (each repeats the turns before it), \
                 more than the {} MiB limit of one line with turns = \"each\"",
                ends.len(),
                cost as f64 / f64::from(1 << 20),
                MAX_TURN_SAMPLES_BYTES >> 20
            ),
        ));
    }
    let mut samples: Vec<Sample> = ends
        .iter()
        .map(|&end| Sample::new(None, line, messages[..end].to_vec(), None, None))
        .collect();
    let base = match (id, samples.last()) {
        (Some(id), _) => id.to_owned(),
        (None, Some(last)) => last.key.to_hex(),
        (None, None) => unreachable!("a user turn makes a sample"),
    };
    for (turn, sample) in samples.iter_mut().enumerate() {
        sample.id = format!("{base}#{}", turn + 1);
    }
    Ok(samples)
}
