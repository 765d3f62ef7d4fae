//! A real Prometheus server (the Debian package `prometheus`, which `scripts/test.sh` installs)
//! scraping one target every second, and its query API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;

use serde_json::Value;
use tokio::process::{Child, Command};

/// The Prometheus binary: `$CAI_PROMETHEUS`, or `prometheus` on the `PATH`.
fn binary() -> String {
    std::env::var("CAI_PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

/// One series of a query result: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A running Prometheus; dropping it kills it.
pub struct Prometheus {
    url: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second. Panics if the binary is
    /// missing, saying how to install it.
    pub fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: cai\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("the Prometheus config is written");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {}: {error}; install the Debian package `prometheus` (scripts/test.sh does) or set CAI_PROMETHEUS",
                    binary()
                )
            });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            _child: child,
            _dir: dir,
        }
    }

    /// The series an instant query returns, or `None` while Prometheus is not answering.
    pub async fn query(&self, promql: &str) -> Option<Vec<Sample>> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        let results = body["data"]["result"].as_array()?;
        Some(
            results
                .iter()
                .filter_map(|series| {
                    let labels = series["metric"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    let value = series["value"][1].as_str()?.parse().ok()?;
                    Some((labels, value))
                })
                .collect(),
        )
    }
}
