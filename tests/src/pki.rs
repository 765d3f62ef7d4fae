//! Certificates a TLS test makes for itself with the `openssl` command (nothing downloaded):
//! a CA, a server certificate it signed for `localhost` and 127.0.0.1, a client certificate it
//! signed, and a second CA that signed nothing (a wrong CA must be refused). EC P-256 keys, so
//! making them takes milliseconds; the keys are PKCS#8, as `openssl req` writes them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of test certificates and keys.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Makes `ca.pem`/`ca.key`, `server.pem`/`server.key`, `client.pem`/`client.key` and
    /// `other-ca.pem`, readable by every user (a broker may run as its own user).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the certificates");
        let pki = Self { dir };
        pki.self_signed("ca", "cai test CA");
        pki.self_signed("other-ca", "another CA");
        pki.signed(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki.signed("client", "cai client", "extendedKeyUsage=clientAuth\n");
        for entry in std::fs::read_dir(pki.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        std::fs::set_permissions(
            pki.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        pki
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn self_signed(&self, name: &str, subject: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={subject}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    fn signed(&self, name: &str, subject: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.path().join(&ext), extensions).unwrap();
        openssl(
            self.dir.path(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={subject}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
