//! `report.html` of real jobs of both pipelines: rendered in a real headless Chromium to a PNG
//! that is not blank, naming nothing on the network, its figures equal to what the output
//! files hold; a running job's directory (no manifest, a torn last line) reads too; failures
//! are grouped by reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use cai_coordinator::report;
use cai_tests::harness::{JobDir, read_jsonl, run_job};
use cai_tests::jobs::{self, Target};
use cai_tests::model_server::{ModelServer, ServerConfig};
use serde_json::Value;

/// The text of the summary figure `id` (`<div id="fig-ID"><dt>…</dt><dd>VALUE</dd>`).
fn figure(html: &str, id: &str) -> String {
    let start = html
        .find(&format!("id=\"fig-{id}\""))
        .unwrap_or_else(|| panic!("no figure {id}"));
    let value = &html[start..];
    let value = &value[value.find("<dd>").unwrap() + 4..];
    unescape(&value[..value.find("</dd>").unwrap()])
}

/// Text as a browser shows it: the template's HTML escapes undone.
fn unescape(text: &str) -> String {
    text.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The text of the element with `id` (no markup inside).
fn element(html: &str, id: &str) -> String {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let value = &html[start..];
    let value = &value[value.find('>').unwrap() + 1..];
    unescape(&value[..value.find('<').unwrap()])
}

/// Fails if the page could fetch anything: no external resource tags, and no URL in an
/// attribute or a CSS `url(` / `@import`.
fn assert_offline(html: &str) {
    let lower = html.to_lowercase();
    for tag in [
        "<link", "<img", "<iframe", "<object", "<embed", "<base", "@import",
    ] {
        assert!(!lower.contains(tag), "the report has {tag}");
    }
    assert!(!lower.contains("<script src"), "the report loads a script");
    for attribute in ["src=", "href=", "url(", "action="] {
        for (at, _) in lower.match_indices(attribute) {
            let value = lower[at + attribute.len()..].trim_start_matches(['"', '\'', ' ']);
            assert!(
                !(value.starts_with("http") || value.starts_with("//")),
                "network reference at {}",
                &lower[at..(at + 80).min(lower.len())]
            );
        }
    }
    assert!(
        !lower.contains("xmlns=\"http"),
        "an SVG namespace URL is left"
    );
}

/// The share of labels with both orders judged whose orders agreed, as the report prints it.
fn consistency(rows: &[Value]) -> String {
    let swapped: Vec<bool> = rows
        .iter()
        .filter_map(|row| row["position_consistent"].as_bool())
        .collect();
    let same = swapped.iter().filter(|same| **same).count();
    format!("{:.1} %", 100.0 * same as f64 / swapped.len() as f64)
}

/// Screenshots `html` in headless Chromium and checks the picture is not blank: many colours
/// and plenty of pixels that are not white.
fn assert_renders(html: &Path) {
    let chromium = std::env::var("CAI_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let png = profile.path().join("report.png");
    let output = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2400")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("{chromium}: {e}: install it with scripts/test-deps.sh (Debian's chromium)")
        });
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let mut colours = std::collections::HashSet::new();
    let mut inked = 0usize;
    for pixel in pixels[..info.buffer_size()].chunks(channels) {
        colours.insert([pixel[0], pixel[1], pixel[2]]);
        inked += usize::from(pixel[..3].iter().any(|&c| c < 200));
    }
    let total = (info.width * info.height) as usize;
    assert!(
        (info.width, info.height) == (1280, 2400),
        "{}x{}",
        info.width,
        info.height
    );
    assert!(
        colours.len() > 50,
        "only {} colours: a blank page",
        colours.len()
    );
    assert!(
        inked > total / 100,
        "only {inked} of {total} pixels are not near white"
    );
}

fn html_of(dir: &Path) -> (PathBuf, String) {
    let path = report::write(dir, None).unwrap();
    assert_eq!(path, dir.join("report.html"));
    let html = std::fs::read_to_string(&path).unwrap();
    (path, html)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairwise_report_renders_and_its_figures_are_the_files() {
    let dir = JobDir::new();
    run_job(&jobs::mock_pairwise(&dir, 80)).await.unwrap();
    let out = dir.path("out");
    let (path, html) = html_of(&out);
    assert_offline(&html);
    let rows = dir.rows("preferences.jsonl");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(figure(&html, "done"), rows.len().to_string());
    assert_eq!(
        figure(&html, "failed"),
        dir.rows("failed.jsonl").len().to_string()
    );
    assert_eq!(
        figure(&html, "lines-read"),
        manifest["counts"]["lines_read"].to_string()
    );
    assert_eq!(figure(&html, "calls"), manifest["model_calls"].to_string());
    assert_eq!(figure(&html, "state"), "complete");
    assert_eq!(figure(&html, "position-consistency"), consistency(&rows));
    assert_eq!(element(&html, "position-consistency"), consistency(&rows));
    let prefers_chosen = rows
        .iter()
        .filter(|row| {
            let readings = row["readings"].as_array().unwrap();
            let p_x: f64 = readings
                .iter()
                .map(|r| {
                    let p = r["p_first"].as_f64().unwrap();
                    if r["order"] == "xy" { p } else { 1.0 - p }
                })
                .sum::<f64>()
                / readings.len() as f64;
            p_x >= 0.5
        })
        .count();
    assert_eq!(
        element(&html, "human-agreement"),
        format!("{:.1} %", 100.0 * prefers_chosen as f64 / rows.len() as f64)
    );
    // The mock judge records its letter mass: the histogram is there.
    assert!(
        html.contains("readings. Low mass means"),
        "no letter-mass figure"
    );
    assert_eq!(
        html.matches("<details class=\"sample\"").count(),
        rows.len()
    );
    assert!(html.contains(">chosen</span>") && html.contains("order</th>"));
    assert!(!html.contains("mock-pairwise/") && !html.contains("api_key"));
    assert_renders(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critique_revise_report_renders_and_its_figures_are_the_files() {
    let dir = JobDir::new();
    run_job(&jobs::mock_critique_revise(&dir, 30))
        .await
        .unwrap();
    let out = dir.path("out");
    let (path, html) = html_of(&out);
    assert_offline(&html);
    let traces = dir.rows("traces.jsonl");
    let done = traces.iter().filter(|t| t["status"] == "done").count();
    assert_eq!(figure(&html, "done"), done.to_string());
    assert_eq!(
        figure(&html, "failed"),
        dir.rows("failed.jsonl").len().to_string()
    );
    assert!(
        figure(&html, "constitution").contains("default.toml"),
        "{html}"
    );
    // One row of the rounds table per round: the initial answer and two revisions, each
    // answered by every sample.
    let sft = dir.rows("sft.jsonl");
    for round in 1..=2 {
        let rows = sft.iter().filter(|row| row["round"] == round).count();
        assert_eq!(rows, done);
        assert!(
            html.contains(&format!("<tr><td>{round}</td><td>{done}</td>")),
            "round {round}"
        );
    }
    assert!(html.contains(&format!("<tr><td>initial</td><td>{done}</td>")));
    assert_eq!(
        html.matches("<details class=\"sample\"").count(),
        traces.len()
    );
    assert!(
        html.contains(">critique-1 · principle "),
        "no chain in the browser"
    );
    assert_renders(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_reads_without_its_manifest_and_with_a_torn_last_line() {
    let dir = JobDir::new();
    run_job(&jobs::mock_pairwise(&dir, 40)).await.unwrap();
    let out = dir.path("out");
    let rows = dir.rows("preferences.jsonl");
    // As a run in progress leaves it: no manifest yet, and rows being appended (cut inside a
    // UTF-8 character) after the last complete line.
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    for file in ["preferences.jsonl", "traces.jsonl"] {
        let mut bytes = std::fs::read(out.join(file)).unwrap();
        bytes.extend_from_slice(
            "{\"id\":\"torn\",\"prompt\":[{\"role\":\"user\",\"content\":\"caf".as_bytes(),
        );
        bytes.push("é".as_bytes()[0]);
        std::fs::write(out.join(file), bytes).unwrap();
    }
    let (_, html) = html_of(&out);
    assert!(figure(&html, "state").starts_with("incomplete"));
    assert_eq!(figure(&html, "lines-read"), "n/a");
    assert_eq!(figure(&html, "done"), rows.len().to_string());
    assert_eq!(figure(&html, "position-consistency"), consistency(&rows));
    assert_eq!(
        html.matches("<details class=\"sample\"").count(),
        rows.len()
    );
    assert!(!html.contains(">torn<"));
    assert!(
        !out.join("README.md").exists()
            || cai_coordinator::card::is_generated(&out.join("README.md"))
    );
    assert_eq!(
        cai_coordinator::card::render(&out).unwrap(),
        None,
        "an unfinished job gets no dataset card"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_grouped_by_reason() {
    let server = ModelServer::start(ServerConfig {
        no_letters: true,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let url = server.url();
    let job = jobs::pairwise(
        &dir,
        Target {
            file: "job.toml",
            name: "no-letters",
            url: &url,
            output: "out",
        },
        6,
    );
    run_job(&job).await.unwrap();
    let out = dir.path("out");
    let failed = read_jsonl(&out.join("failed.jsonl"));
    assert_eq!(failed.len(), 6);
    let (_, html) = html_of(&out);
    assert_eq!(figure(&html, "failed"), "6");
    let reason = report::headline::reason_kind(failed[0]["reason"].as_str().unwrap());
    assert!(reason.starts_with("judge: "), "{reason}");
    let shown = unescape(&html);
    assert!(
        shown.contains(&format!("<tr><td>{reason}</td><td>6</td></tr>")),
        "no row for {reason}"
    );
}
