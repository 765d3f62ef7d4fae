//! A smoke run of the benchmark harness at tiny sizes, so it never rots: every mode it offers
//! runs end to end and its JSON report holds the expected fields with sane values. No timing
//! thresholds: the numbers of a tiny run on a shared machine mean nothing.
//!
//! Needs the `cai` binary next to `cai-bench` (`cargo test --workspace` builds both) and, for
//! the distributed run, RabbitMQ and Redis on 127.0.0.1 (Redis database 11 is this test's).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `cai-bench` with `args` and returns its JSON report.
fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_cai-bench"))
        .args(args)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("cai-bench starts");
    assert!(
        output.status.success(),
        "cai-bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    read(&json)
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// The checks every measured phase passes.
fn sane(phase: &Value, samples: u64) {
    assert_eq!(phase["done_this_run"], samples, "{phase:#}");
    assert_eq!(phase["failed"], 0, "{phase:#}");
    assert_eq!(phase["exit_code"], 0, "{phase:#}");
    assert!(number(&phase["samples_per_s"]) > 0.0, "{phase:#}");
    assert!(number(&phase["calls_per_s"]) > 0.0, "{phase:#}");
    let processes = phase["processes"].as_array().unwrap();
    assert!(!processes.is_empty());
    let cai = processes
        .iter()
        .filter(|p| p["role"] != "redis" && p["role"] != "rabbitmq");
    for process in cai {
        assert!(number(&process["cpu_s"]) > 0.0, "{process:#}");
        assert!(number(&process["peak_rss_mib"]) > 1.0, "{process:#}");
        assert!(process["wall_s"].is_number(), "{process:#}");
    }
}

#[test]
fn embedded_pairwise_run_reports_throughput_and_costs() {
    let report = bench(&["--samples", "2000", "--mode", "embedded", "--runs", "2"]);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let phase = &run["phases"][0];
        sane(phase, 2000);
        assert_eq!(phase["model_calls"], 4000, "two judge calls per sample");
        assert_eq!(phase["processes"][0]["role"], "embedded");
    }
    assert_eq!(report["summary"]["samples_per_s"]["n"], 2);
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
}

#[test]
fn distributed_resume_reports_queues_redis_and_no_repeated_call() {
    let report = bench(&[
        "--pipeline",
        "critique-revise",
        "--samples",
        "200",
        "--mode",
        "distributed",
        "--workers",
        "1",
        "--resume-at",
        "0.5",
        "--count-calls",
        "--db",
        "11",
    ]);
    let phases = report["runs"][0]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    sane(&phases[0], 100);
    let resumed = &phases[1];
    sane(resumed, 100);
    assert_eq!(resumed["done_total"], 200);
    assert_eq!(
        resumed["model_calls"], 300,
        "three calls per new sample only"
    );
    let roles: Vec<&str> = resumed["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles[..2], ["coordinator", "worker-1"]);
    assert!(
        roles.contains(&"redis") && roles.contains(&"rabbitmq"),
        "{roles:?}"
    );
    assert!(number(&resumed["first_task_s"]) > 0.0);
    let check = &resumed["call_check"];
    assert_eq!(check["source"], "mock-log");
    assert_eq!(check["calls"], 300, "{check:#}");
    assert_eq!(check["repeated"], 0, "{check:#}");
    let redis = &resumed["redis"];
    assert_eq!(redis["done_set_members"], 200, "{redis:#}");
    assert_eq!(redis["step_hashes_left"], 0, "{redis:#}");
    assert!(number(&redis["bytes_per_sample"]) > 0.0, "{redis:#}");
    assert!(resumed["queues"]["series"].is_array());
}

#[test]
fn model_server_run_reports_efficiency() {
    let report = bench(&[
        "--samples",
        "100",
        "--model",
        "server",
        "--latency-ms",
        "5",
        "--concurrency",
        "16",
        "--workers",
        "1",
    ]);
    let phase = &report["runs"][0]["phases"][0];
    sane(phase, 100);
    let efficiency = number(&phase["efficiency"]);
    assert!(efficiency > 0.0 && efficiency < 1.5, "{phase:#}");
    let check = &phase["call_check"];
    assert_eq!(check["source"], "server");
    assert_eq!(check["calls"], 200, "{check:#}");
    assert_eq!(check["repeated"], 0, "{check:#}");
}

#[test]
fn an_auto_limit_against_a_server_of_small_capacity_reports_the_refused_calls() {
    let report = bench(&[
        "--samples",
        "200",
        "--model",
        "server",
        "--latency-ms",
        "5",
        "--concurrency",
        "32",
        "--auto",
        "--server-capacity",
        "4",
        "--workers",
        "1",
    ]);
    let phase = &report["runs"][0]["phases"][0];
    sane(phase, 200);
    assert_eq!(number(&phase["ideal_samples_per_s"]), 400.0, "{phase:#}");
    let check = &phase["call_check"];
    // The limit starts at 8, over the server's 4: some calls are refused, and retried.
    let refused = check["over_capacity"].as_u64().unwrap();
    assert!(refused > 0, "{check:#}");
    assert_eq!(check["calls"], 400 + refused, "{check:#}");
    assert_eq!(check["repeated"], 0, "{check:#}");
}
