//! TLS to the broker and the state store beyond what their URLs say. `amqps://` and `rediss://`
//! turn TLS on; the server's name is always checked against its certificate, and the certificate
//! against the system's roots unless a private CA is named (`--tls-ca-file`, the usual case for
//! a managed service inside a company). A client certificate and key are sent where a service
//! asks for them (mutual TLS). The files are read once, at connect, so a typo fails the start
//! with the file's name rather than the first reconnect.

use std::path::{Path, PathBuf};

/// Where the TLS files are; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA that signed the servers' certificates, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this process's client certificate, for services that ask for one.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, or as `openssl` writes it).
    pub key_file: Option<PathBuf>,
}

/// The contents of the TLS files, read and checked. No `Debug`: it holds a private key.
#[derive(Clone, Default)]
pub struct TlsPem {
    /// The CA's certificate chain, if one was named.
    pub ca: Option<Vec<u8>>,
    /// The client certificate and its key, if both were named.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files. A client certificate needs its key and the other way round; a file
    /// that cannot be read or holds no PEM block is an error naming it.
    pub fn read(&self) -> Result<TlsPem, String> {
        let ca = self.ca_file.as_deref().map(read_pem).transpose()?;
        let client = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((read_pem(cert)?, read_pem(key)?)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("--tls-cert-file needs --tls-key-file (the certificate's key)".into());
            }
            (None, Some(_)) => {
                return Err("--tls-key-file needs --tls-cert-file (the key's certificate)".into());
            }
        };
        Ok(TlsPem { ca, client })
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(format!("{}: no PEM block in it", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_and_half_a_client_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let read = TlsFiles {
            ca_file: Some(pem.clone()),
            ..TlsFiles::default()
        }
        .read()
        .unwrap();
        assert!(read.ca.is_some() && read.client.is_none());

        let half = TlsFiles {
            cert_file: Some(pem.clone()),
            ..TlsFiles::default()
        };
        assert!(half.read().err().unwrap().contains("--tls-key-file"));

        let missing = TlsFiles {
            ca_file: Some(dir.path().join("nope.pem")),
            ..TlsFiles::default()
        };
        assert!(missing.read().err().unwrap().contains("nope.pem"));

        let not_pem = dir.path().join("ca.der");
        std::fs::write(&not_pem, [0x30, 0x82, 0x01]).unwrap();
        let garbage = TlsFiles {
            ca_file: Some(not_pem),
            ..TlsFiles::default()
        };
        assert!(garbage.read().err().unwrap().contains("no PEM block"));
    }
}
