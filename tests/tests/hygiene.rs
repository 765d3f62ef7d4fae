//! The harness's promise that a test which dies leaves no `cai` process behind: a child test
//! process starts a real `cai worker`, prints its pid and aborts (no destructor runs); the
//! worker must be gone soon after. A worker left behind would serve later tests' jobs.

use std::process::{Command, Stdio};
use std::time::Duration;

use cai_tests::cluster::Cluster;
use cai_tests::harness::wait_until;

/// Set in the child test process: start a worker, print its pid, abort.
const CHILD: &str = "CAI_TEST_HYGIENE_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_test_leaves_no_worker_behind() {
    if std::env::var_os(CHILD).is_some() {
        let cluster = Cluster::unique();
        let log = std::env::temp_dir().join(format!("{}.log", cluster.job));
        let worker = cluster.worker("orphan", &log, &[]);
        let pid = worker.id().expect("the worker runs");
        // The death signal is armed once `setpriv` has exec'd `cai` (an abort in the instant
        // between the fork and that is the one window the kernel leaves open).
        let comm = format!("/proc/{pid}/comm");
        wait_until(Duration::from_secs(10), "the worker is cai", || {
            std::fs::read_to_string(&comm).is_ok_and(|name| name.trim() == "cai")
        })
        .await;
        println!("worker pid {pid}");
        println!("key prefix {}", cluster.job);
        std::process::abort();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_aborted_test_leaves_no_worker_behind",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .expect("the child test runs");
    assert!(!child.status.success(), "the child test aborted");
    let stdout = String::from_utf8_lossy(&child.stdout);
    let pid: u32 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("worker pid "))
        .unwrap_or_else(|| panic!("no pid in the child's output:\n{stdout}"))
        .trim()
        .parse()
        .unwrap();
    let prefix = stdout
        .lines()
        .find_map(|line| line.strip_prefix("key prefix "))
        .expect("the child names its key prefix")
        .trim()
        .to_owned();
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    wait_until(
        Duration::from_secs(10),
        "the orphaned worker is gone",
        || {
            // Gone, or a zombie waiting for init to reap it.
            std::fs::read_to_string(proc.join("stat"))
                .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"))
        },
    )
    .await;
    // The aborted child cleaned nothing up: its worker's heartbeat keys and its log.
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_connection()
        .unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut redis)
        .unwrap();
    if !left.is_empty() {
        let () = redis::cmd("DEL").arg(&left).query(&mut redis).unwrap();
    }
    let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{prefix}.log")));
}
