//! A full output volume: `cai run` with its output directory on a 256 KiB tmpfs stops with a
//! message naming the file and the bytes it needed; nothing it left is counted twice or torn
//! after the next open; once the volume is grown, the same command completes the job exactly
//! once. Needs root (the test mounts a tmpfs of its own), as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use cai_coordinator::ledger;
use cai_tests::harness::{JobDir, cai_process, data_file, repo_file};
use cai_tests::scenario::check_exactly_once;

/// A tmpfs mounted on a temporary directory for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("a mount point");
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir.path(),
        );
        Self { dir }
    }

    fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], self.dir.path());
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn mount(args: &[&str], at: &Path) {
    let output = Command::new("mount")
        .args(args)
        .arg(at)
        .output()
        .expect("mount runs");
    assert!(
        output.status.success(),
        "this test mounts a small tmpfs and needs root: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn job(dir: &JobDir, out: &Path) -> PathBuf {
    dir.write(
        "job.toml",
        format!(
            r#"
name = "disk-full"
pipeline = "critique-revise"
output = "{out}"

[input]
path = "{corpus}"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"

[critique_revise]
model = "policy"
revisions = 2

[models.policy]
backend = "mock"
"#,
            out = out.display(),
            corpus =
                data_file("hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl").display(),
            constitution = repo_file("constitutions/default.toml").display(),
        ),
    )
}

async fn run(job: &Path) -> std::process::Output {
    cai_process()
        .arg("run")
        .arg(job)
        .output()
        .await
        .expect("cai runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_stops_the_run_and_a_rerun_after_freeing_space_completes_once() {
    let volume = Tmpfs::mount("256k");
    let out = volume.path().join("out");
    let dir = JobDir::new();
    let job = job(&dir, &out);

    let full = run(&job).await;
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the output volume is full: writing")
            && stderr.contains(&out.display().to_string())
            && stderr.contains("more bytes"),
        "{stderr}"
    );
    let committed = ledger::totals(&out).expect("the output directory opens");
    assert!(
        committed.done < 500,
        "the volume filled before the end ({} done)",
        committed.done
    );

    volume.resize("64m");
    let rerun = run(&job).await;
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    // The shipped prompts repeat a few: every line is read, each sample written once.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["counts"]["lines_read"], 500);
    let done = manifest["counts"]["done"].as_u64().unwrap() as usize;
    check_exactly_once(&out, "sft.jsonl", done);
    assert!(
        done > committed.done as usize,
        "the re-run finished the job"
    );
}
