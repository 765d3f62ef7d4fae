//! A Redis server of the test's own, on a free loopback port, that the test can stop and start
//! again on the same port with the same data: a real outage of the state store, which the
//! machine's shared Redis (used by every other test) must never have.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private `redis-server` with an append-only file fsynced at every write, so what the run
/// wrote before a stop is there after the start.
pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            port,
            dir: tempfile::tempdir().expect("a data directory"),
            server: None,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        assert!(self.server.is_none(), "the private redis is running");
        let log = self.dir.path().join("redis.log");
        let server = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (Debian package redis-server)");
        self.server = Some(server);
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

    /// Whether the server answers `PING` with `PONG` (not `LOADING`).
    fn answers(&self) -> bool {
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
