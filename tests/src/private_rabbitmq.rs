//! A RabbitMQ node of the test's own beside the machine's broker: its own node name, Erlang
//! distribution port and data directory, and one listener, TLS on a free port, with the
//! server certificate of a [`TestPki`]. A TLS test cannot reconfigure the shared broker that
//! every other test uses, so it starts this one (about ten seconds) and stops it when dropped.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::pki::TestPki;

/// A running private node.
pub struct PrivateRabbitMq {
    node: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRabbitMq {
    /// Starts a node whose only listener is TLS, and waits until it has started. With
    /// `require_client_cert` it refuses clients without a certificate signed by the CA.
    pub fn start_tls(pki: &TestPki, require_client_cert: bool) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let node = format!(
            "cai-test-{}-{}@localhost",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (port, dist_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("a directory for the node");
        // The server runs as the `rabbitmq` user: it must be able to write here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let verify = if require_client_cert {
            "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"
        } else {
            "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n"
        };
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = {port}\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n{verify}",
                pki.path("ca.pem").display(),
                pki.path("server.pem").display(),
                pki.path("server.key").display(),
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.path().join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", dir.path().join("node.pid"))
            .status()
            .expect("rabbitmq-server starts (Debian package rabbitmq-server)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let node_ready = Self { node, port, dir };
        // `wait` waits for the pid file the detached node writes, then for the broker to start.
        let started = Command::new("rabbitmqctl")
            .args(["-q", "-n", &node_ready.node, "wait"])
            .arg(node_ready.dir.path().join("node.pid"))
            .args(["--timeout", "60"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            started.status.success(),
            "the private RabbitMQ node did not start: {}\nlog:\n{}",
            String::from_utf8_lossy(&started.stderr),
            logs(&node_ready.dir.path().join("log"))
        );
        node_ready
    }

    /// `amqps://guest:guest@localhost:<port>/%2f` (guest may connect over loopback).
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
