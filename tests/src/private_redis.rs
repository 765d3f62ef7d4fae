//! A Redis server of the test's own, on a free loopback port, that the test can stop and start
//! again on the same port with the same data: a real outage of the state store, which the
//! machine's shared Redis (used by every other test) must never have.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::TestPki;

/// A private `redis-server` with an append-only file fsynced at every write, so what the run
/// wrote before a stop is there after the start.
pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    server: Option<Child>,
    tls: Option<Tls>,
}

/// A TLS-only server's files.
struct Tls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    require_client_cert: bool,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts one that speaks only TLS, with the server certificate of `pki`, on 127.0.0.1 and
    /// 127.0.0.2 (whose address the certificate does not name); with `require_client_cert`,
    /// it refuses clients without a certificate signed by the CA.
    pub fn start_tls(pki: &TestPki, require_client_cert: bool) -> Self {
        Self::start_with(Some(Tls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            ca: pki.path("ca.pem"),
            client: (pki.path("client.pem"), pki.path("client.key")),
            require_client_cert,
        }))
    }

    fn start_with(tls: Option<Tls>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            port,
            dir: tempfile::tempdir().expect("a data directory"),
            server: None,
            tls,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://localhost:<port>` for a TLS server.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    /// This server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM: Redis flushes its append-only file and exits) and waits
    /// until the port refuses connections.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status();
        let _ = server.wait();
        assert!(!self.answers(), "redis on port {} still answers", self.port);
    }

    /// Starts the server again on the same port and data, and waits until it answers `PING`.
    pub fn start_again(&mut self) {
        self.spawn();
        let log = self.dir.path().join("redis.log");
        let give_up = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(
                Instant::now() < give_up,
                "the private redis did not answer in 20 s; log:\n{}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port and data and returns at once, while it may
    /// still be loading its data (answering `LOADING` to every command).
    pub fn start_again_loading(&mut self) {
        self.spawn();
    }

    /// Runs `redis-cli` against the server (plain TCP) and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn spawn(&mut self) {
        assert!(self.server.is_none(), "the private redis is running");
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "127.0.0.2"])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args([
                    "--tls-auth-clients",
                    if tls.require_client_cert { "yes" } else { "no" },
                ]),
        };
        let server = command
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (Debian package redis-server)");
        self.server = Some(server);
    }

    /// Whether the server answers `PING` with `PONG` (not `LOADING`).
    fn answers(&self) -> bool {
        if let Some(tls) = &self.tls {
            return Command::new("redis-cli")
                .args(["--tls", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client.0)
                .arg("--key")
                .arg(&tls.client.1)
                .arg("PING")
                .output()
                .is_ok_and(|output| output.stdout.starts_with(b"PONG"));
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}
