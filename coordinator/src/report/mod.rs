//! `report.html`: one self-contained page (inline CSS, SVG and a few lines of JS; nothing
//! fetched) that shows a job's output as a practitioner judges it: the headline figures, the
//! label distribution and position bias of a pairwise job, the principles, lengths and changes
//! of a critique-revise job, failures by reason, throughput over time, and a browser of sampled
//! chains. Everything is computed from the output files, and a running job's directory reads as
//! well as a finished one's (complete lines only).

pub mod headline;
mod pairwise;
mod plots;
mod revisions;
mod samples;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use headline::{Figure, Headline};
use pairwise::PairwiseSection;
use revisions::RevisionSection;
use samples::SampleView;

/// The report's file name in an output directory.
pub const REPORT_FILE: &str = "report.html";
/// Samples the browser shows.
const SAMPLES: usize = 200;
/// The page's template (minijinja; HTML autoescaping on).
const TEMPLATE: &str = include_str!("report.html");

/// What the template is given.
#[derive(Serialize)]
struct Page {
    headline: Headline,
    figures: Vec<Figure>,
    generated_at: String,
    throughput_svg: Option<String>,
    failures_svg: Option<String>,
    pairwise: Option<PairwiseSection>,
    revisions: Option<RevisionSection>,
    samples: Vec<SampleView>,
}

/// Renders the report of an output directory.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let headline = Headline::read(dir)?;
    let read = |what: &str| format!("{}: cannot read the {what}", dir.display());
    let (pairwise, revisions) = match &headline.labels {
        Some(labels) => (
            Some(pairwise::read(dir, labels.clone()).with_context(|| read("preferences"))?),
            None,
        ),
        None => (
            None,
            Some(revisions::read(dir).with_context(|| read("traces"))?),
        ),
    };
    let samples =
        samples::read(dir, SAMPLES, pairwise.is_some()).with_context(|| read("samples"))?;
    let throughput_svg = throughput(&headline);
    let failures: Vec<(String, f64)> = headline
        .failures
        .iter()
        .map(|kind| (kind.reason.clone(), kind.samples as f64))
        .collect();
    let page = Page {
        figures: headline.figures(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        throughput_svg,
        failures_svg: (!failures.is_empty())
            .then(|| plots::bars(&failures, "samples failed", None, |v| format!("{v:.0}"))),
        pairwise,
        revisions,
        samples,
        headline,
    };
    let mut environment = minijinja::Environment::new();
    environment.add_template("report.html", TEMPLATE)?;
    Ok(environment
        .get_template("report.html")?
        .render(minijinja::value::Serde(&page))?)
}

/// Samples settled over time since the first timed commit, when there are two or more.
fn throughput(headline: &Headline) -> Option<String> {
    let first = headline.timeline.first()?.at_ms;
    if headline.timeline.len() < 2 {
        return None;
    }
    let mut settled = 0u64;
    let points: Vec<(f64, f64)> = headline
        .timeline
        .iter()
        .map(|point| {
            settled += point.samples;
            ((point.at_ms - first) as f64 / 1000.0, settled as f64)
        })
        .collect();
    Some(plots::line(
        &points,
        "seconds since the first commit",
        "samples settled",
    ))
}

/// Writes the report of an output directory to `out` (default `DIR/report.html`), atomically
/// (a temporary file beside it, then a rename), and returns where.
pub fn write(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let html = render(dir)?;
    let target = out.map_or_else(|| dir.join(REPORT_FILE), Path::to_owned);
    write_atomically(&target, html.as_bytes())?;
    Ok(target)
}

/// Writes a file by writing a temporary file in the same directory and renaming it over the
/// target, so a reader never sees half of it.
pub(crate) fn write_atomically(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = target
        .file_name()
        .with_context(|| format!("{}: not a file path", target.display()))?;
    let temporary = target.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("{}: cannot write", temporary.display()))?;
    std::fs::rename(&temporary, target)
        .with_context(|| format!("{}: cannot write", target.display()))
}
