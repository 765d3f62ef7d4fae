//! The one classification of broker and state-store failures: whether waiting can cure a
//! failure (a refused connection, a reset, a timeout, a server loading its data), whether it
//! is a request the service will never accept, or whether the setup itself is wrong (a
//! certificate this process will never trust, refused credentials, a URL that does not parse)
//! and the process must stop and say what to fix. Every process (coordinator, `cai worker`,
//! `cai status`, the readiness probe through the connect wait) sees its errors through
//! [`classify`], so a wrong CA file cannot look like a Redis that is restarting in one place
//! and stop the run in another.
//!
//! TLS and name-resolution failures reach cai as text: both client libraries wrap rustls's and
//! the resolver's errors into I/O errors whose only stable part is their message (rustls's
//! `Display` of its error types, the C library's `getaddrinfo` text). They are read from the
//! whole chain of messages; everything else is read from the libraries' typed errors.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use redis::{ErrorKind as RedisKind, RedisError, ServerErrorKind};

use super::FailureKind;

/// A failure as a client library or cai's own checks reported it: what [`classify`] reads.
#[derive(Clone, Copy)]
pub enum Failure<'a> {
    /// An error of the Redis client.
    Redis(&'a RedisError),
    /// An error of the RabbitMQ client.
    Amqp(&'a lapin::Error),
    /// A service URL that does not parse, or names a scheme cai does not speak.
    BadUrl,
    /// A TLS file (`--tls-ca-file`, `--tls-cert-file`, `--tls-key-file`) that cannot be read,
    /// holds no PEM, or lacks its other half.
    TlsFile,
}

/// What a failure asks of the process and, where waiting cannot cure it, what to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Wait, give the request up, or stop.
    pub kind: FailureKind,
    /// What the operator should change, for a failure that waiting cannot cure.
    pub fix: Option<&'static str>,
}

const FIX_CA: &str = "the server's certificate is not signed by a CA this process trusts: name \
    the CA that signed it with --tls-ca-file (CAI_TLS_CA_FILE)";
const FIX_NAME: &str = "the server's certificate does not name the host in the URL: connect by \
    a name the certificate lists, or reissue it for this name";
const FIX_VALIDITY: &str = "the server's certificate is outside its validity period (or this \
    machine's clock is wrong): renew the certificate";
const FIX_CLIENT_CERT: &str = "the server refused this client during the TLS handshake: it \
    demands a client certificate signed by a CA it trusts (--tls-cert-file and --tls-key-file)";
const FIX_TLS: &str = "the TLS connection failed: check that the port speaks TLS (rediss:// and \
    amqps:// need a TLS listener, redis:// and amqp:// a plain one) and the --tls-* files";
const FIX_HOST: &str = "the host name does not resolve: check it in the URL (a starting \
    cluster's DNS may lag; it is waited for up to --connect-timeout-s)";
const FIX_URL: &str = "fix the URL: amqp[s]://user:password@host:port/vhost for the broker, \
    redis[s]://[user:password@]host:port[/db][?prefix=name] for the state store";
const FIX_TLS_FILE: &str = "fix the files named with --tls-ca-file, --tls-cert-file and \
    --tls-key-file (or CAI_TLS_*): each must be readable PEM, a certificate with its key";
const FIX_REDIS_AUTH: &str = "Redis refused the credentials: check the user and password in the \
    state-store URL";
const FIX_REDIS_ACL: &str = "the Redis user lacks a permission cai needs (a command, or access \
    to the prefix's keys): grant it with ACL SETUSER";
const FIX_AMQP_AUTH: &str = "RabbitMQ refused the user: check the user and password in the \
    broker URL, and the user's permissions on the vhost (rabbitmqctl list_permissions)";
const FIX_AMQP_VHOST: &str = "the vhost in the broker URL does not exist or the user may not use \
    it (rabbitmqctl list_vhosts, set_permissions)";
const FIX_AMQP_PROTOCOL: &str = "the port does not speak AMQP 0-9-1: check the broker URL's port";

/// What `failure` asks of the process: the single table behind every broker and state-store
/// error (see the module's documentation, and docs/DESIGN.md for the list of what waits).
pub fn classify(failure: Failure<'_>) -> Verdict {
    let text = match failure {
        Failure::BadUrl => return stop(FIX_URL),
        Failure::TlsFile => return stop(FIX_TLS_FILE),
        Failure::Redis(error) => chain_text(error),
        Failure::Amqp(error) => chain_text(error),
    };
    if let Some(fix) = tls_fix(&text) {
        return stop(fix);
    }
    if is_unknown_host(&text) {
        return Verdict {
            kind: FailureKind::UnknownHost,
            fix: Some(FIX_HOST),
        };
    }
    match failure {
        Failure::Redis(error) => redis_verdict(error),
        Failure::Amqp(error) => amqp_verdict(error),
        Failure::BadUrl | Failure::TlsFile => unreachable!("answered above"),
    }
}

fn stop(fix: &'static str) -> Verdict {
    Verdict {
        kind: FailureKind::Misconfigured,
        fix: Some(fix),
    }
}

fn verdict(kind: FailureKind) -> Verdict {
    Verdict { kind, fix: None }
}

/// The error's message followed by its causes' messages.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// What to fix for a TLS failure that rustls reported, if the text holds one.
fn tls_fix(text: &str) -> Option<&'static str> {
    if let Some((_, reason)) = text.split_once("invalid peer certificate: ") {
        return Some(if reason.starts_with("UnknownIssuer") {
            FIX_CA
        } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
            FIX_NAME
        } else if reason.contains("xpired") || reason.contains("NotValidYet") {
            FIX_VALIDITY
        } else {
            FIX_TLS
        });
    }
    if let Some((_, alert)) = text.split_once("received fatal alert: ") {
        let refused_us = [
            "CertificateRequired",
            "BadCertificate",
            "UnknownCA",
            "HandshakeFailure",
            "AccessDenied",
            "CertificateUnknown",
        ];
        return Some(if refused_us.iter().any(|a| alert.starts_with(a)) {
            FIX_CLIENT_CERT
        } else {
            FIX_TLS
        });
    }
    let protocol = [
        "received corrupt message",
        "peer is incompatible",
        "peer misbehaved",
        "peer sent no certificates",
        "invalid dns name",
    ];
    protocol
        .iter()
        .any(|marker| text.contains(marker))
        .then_some(FIX_TLS)
}

/// Whether the text says a host name did not resolve (the C library's resolver through
/// std and tokio, or the Redis client finding no address).
fn is_unknown_host(text: &str) -> bool {
    [
        "failed to lookup address information",
        "No address found for host",
        "Name or service not known",
        "nodename nor servname provided",
    ]
    .iter()
    .any(|marker| text.contains(marker))
}

/// A Redis error that is neither TLS nor name resolution: refused credentials and missing
/// permissions stop; a server that cannot be reached, is loading its data or fails over is
/// waited for; any other command error is a rejected request.
fn redis_verdict(error: &RedisError) -> Verdict {
    // A pipeline or a transaction (MULTI/EXEC) reports its commands' errors inside its own: a
    // Redis still loading its data answers `LOADING` to each, and the transaction says
    // EXECABORT around them. The commands' errors decide.
    let mut codes: Vec<String> = error.code().map(str::to_owned).into_iter().collect();
    let mut kinds: Vec<ServerErrorKind> = Vec::new();
    if let Some(errors) = error.clone().into_server_errors() {
        for (_, error) in errors.iter() {
            codes.push(error.code().to_owned());
            kinds.extend(error.kind());
        }
    }
    let has_code = |wanted: &str| codes.iter().any(|code| code == wanted);
    if error.kind() == RedisKind::AuthenticationFailed
        || has_code("WRONGPASS")
        || has_code("NOAUTH")
    {
        return stop(FIX_REDIS_AUTH);
    }
    if error.kind() == RedisKind::Server(ServerErrorKind::NoPerm) || has_code("NOPERM") {
        return stop(FIX_REDIS_ACL);
    }
    if error.kind() == RedisKind::InvalidClientConfig {
        return stop(FIX_URL);
    }
    let server_waits = |kind: &ServerErrorKind| {
        matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    };
    let own_kind_waits = matches!(error.kind(), RedisKind::Server(kind) if server_waits(&kind));
    if is_broken(error)
        || error.is_timeout()
        || error.is_connection_refusal()
        || own_kind_waits
        || kinds.iter().any(server_waits)
    {
        verdict(FailureKind::Unavailable)
    } else {
        verdict(FailureKind::Rejected)
    }
}

/// Whether a Redis error means the connection is gone (rather than a command error).
pub(crate) fn is_broken(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
}

/// A RabbitMQ error that is neither TLS nor name resolution: refused credentials, a vhost the
/// user may not use or a protocol the server does not speak stop; a queue declared with other
/// arguments or a frame that cannot be encoded is a rejected request; anything else (a
/// connection refused, reset or closed, a channel gone, a missed heartbeat) is waited for.
fn amqp_verdict(error: &lapin::Error) -> Verdict {
    use lapin::ErrorKind;
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => stop(FIX_AMQP_AUTH),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => stop(FIX_AMQP_VHOST),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::NOTFOUND) => {
                verdict(FailureKind::Rejected)
            }
            _ => verdict(FailureKind::Unavailable),
        },
        ErrorKind::AuthProviderError(_) => stop(FIX_AMQP_AUTH),
        ErrorKind::InvalidProtocolVersion(_) => stop(FIX_AMQP_PROTOCOL),
        ErrorKind::SerialisationError(_) => verdict(FailureKind::Rejected),
        _ => verdict(FailureKind::Unavailable),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    use super::*;

    fn redis_io(kind: io::ErrorKind, message: &str) -> RedisError {
        RedisError::from(io::Error::new(kind, message.to_owned()))
    }

    fn redis_server(code: &str, detail: &str) -> RedisError {
        // The client parses a server's error line into its typed error, as it does on the wire.
        let line = format!("-{code} {detail}\r\n");
        redis::parse_redis_value(line.as_bytes())
            .expect("an error line parses")
            .extract_error()
            .expect_err("an error reply is an error")
    }

    fn amqp_io(kind: io::ErrorKind, message: &str) -> lapin::Error {
        lapin::ErrorKind::IOError(Arc::new(io::Error::new(kind, message.to_owned()))).into()
    }

    fn amqp_protocol(kind: AMQPErrorKind, message: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, message.into())).into()
    }

    #[test]
    fn every_class_of_failure_waits_or_stops_as_the_table_says() {
        use FailureKind::*;
        let unknown_issuer = "invalid peer certificate: UnknownIssuer";
        let name = "invalid peer certificate: certificate not valid for name \"127.0.0.2\"; \
                    certificate is only valid for DnsName(\"localhost\")";
        let expired = "invalid peer certificate: certificate expired: verification time 1, but \
                       certificate is not valid after 0";
        let required = "received fatal alert: CertificateRequired";
        let plain_port = "received corrupt message of type InvalidContentType";
        let dns = "failed to lookup address information: Name or service not known";
        let redis_cases: Vec<(&str, RedisError, FailureKind, Option<&str>)> = vec![
            (
                "wrong CA",
                redis_io(io::ErrorKind::InvalidData, unknown_issuer),
                Misconfigured,
                Some(FIX_CA),
            ),
            (
                "name mismatch",
                redis_io(io::ErrorKind::InvalidData, name),
                Misconfigured,
                Some(FIX_NAME),
            ),
            (
                "expired",
                redis_io(io::ErrorKind::InvalidData, expired),
                Misconfigured,
                Some(FIX_VALIDITY),
            ),
            (
                "client certificate demanded",
                redis_io(io::ErrorKind::InvalidData, required),
                Misconfigured,
                Some(FIX_CLIENT_CERT),
            ),
            (
                "TLS to a plain port",
                redis_io(io::ErrorKind::InvalidData, plain_port),
                Misconfigured,
                Some(FIX_TLS),
            ),
            (
                "unknown host",
                redis_io(io::ErrorKind::Other, dns),
                UnknownHost,
                Some(FIX_HOST),
            ),
            (
                "no address",
                RedisError::from((RedisKind::InvalidClientConfig, "No address found for host")),
                UnknownHost,
                Some(FIX_HOST),
            ),
            (
                "wrong password",
                redis_server("WRONGPASS", "invalid username-password pair"),
                Misconfigured,
                Some(FIX_REDIS_AUTH),
            ),
            (
                "no password",
                redis_server("NOAUTH", "Authentication required."),
                Misconfigured,
                Some(FIX_REDIS_AUTH),
            ),
            (
                "AUTH refused at connect",
                RedisError::from((
                    RedisKind::AuthenticationFailed,
                    "Password authentication failed",
                )),
                Misconfigured,
                Some(FIX_REDIS_AUTH),
            ),
            (
                "ACL",
                redis_server(
                    "NOPERM",
                    "this user has no permissions to run the 'ping' command",
                ),
                Misconfigured,
                Some(FIX_REDIS_ACL),
            ),
            (
                "bad client config",
                RedisError::from((RedisKind::InvalidClientConfig, "Invalid database number")),
                Misconfigured,
                Some(FIX_URL),
            ),
            (
                "refused",
                redis_io(
                    io::ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                ),
                Unavailable,
                None,
            ),
            (
                "reset",
                redis_io(io::ErrorKind::ConnectionReset, "Connection reset by peer"),
                Unavailable,
                None,
            ),
            (
                "timed out",
                redis_io(io::ErrorKind::TimedOut, "timed out"),
                Unavailable,
                None,
            ),
            (
                "loading",
                redis_server("LOADING", "Redis is loading the dataset in memory"),
                Unavailable,
                None,
            ),
            (
                "replica read-only after a failover",
                redis_server("READONLY", "You can't write against a read only replica."),
                Unavailable,
                None,
            ),
            (
                "a command it refuses",
                redis_server("ERR", "unknown command 'FOO'"),
                Rejected,
                None,
            ),
        ];
        for (what, error, kind, fix) in &redis_cases {
            assert_eq!(
                classify(Failure::Redis(error)),
                Verdict {
                    kind: *kind,
                    fix: *fix
                },
                "Redis: {what} ({error})"
            );
        }

        let amqp_cases: Vec<(&str, lapin::Error, FailureKind, Option<&str>)> = vec![
            (
                "wrong CA",
                amqp_io(io::ErrorKind::InvalidData, unknown_issuer),
                Misconfigured,
                Some(FIX_CA),
            ),
            (
                "name mismatch",
                amqp_io(io::ErrorKind::InvalidData, name),
                Misconfigured,
                Some(FIX_NAME),
            ),
            (
                "client certificate demanded",
                amqp_io(
                    io::ErrorKind::Other,
                    "received fatal alert: HandshakeFailure",
                ),
                Misconfigured,
                Some(FIX_CLIENT_CERT),
            ),
            (
                "unknown host",
                amqp_io(io::ErrorKind::Other, dns),
                UnknownHost,
                Some(FIX_HOST),
            ),
            (
                "ACCESS_REFUSED",
                amqp_protocol(
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
                    "Login was refused using authentication mechanism PLAIN",
                ),
                Misconfigured,
                Some(FIX_AMQP_AUTH),
            ),
            (
                "unknown vhost",
                amqp_protocol(
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
                    "vhost nope not found",
                ),
                Misconfigured,
                Some(FIX_AMQP_VHOST),
            ),
            (
                "queue declared otherwise",
                amqp_protocol(
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                    "inequivalent arg",
                ),
                Rejected,
                None,
            ),
            (
                "refused",
                amqp_io(
                    io::ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                ),
                Unavailable,
                None,
            ),
            (
                "reset",
                amqp_io(io::ErrorKind::ConnectionReset, "Connection reset by peer"),
                Unavailable,
                None,
            ),
            (
                "broker shutting down",
                amqp_protocol(
                    AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
                    "broker forced connection closure with reason 'shutdown'",
                ),
                Unavailable,
                None,
            ),
            (
                "missed heartbeat",
                lapin::ErrorKind::MissingHeartbeatError.into(),
                Unavailable,
                None,
            ),
        ];
        for (what, error, kind, fix) in &amqp_cases {
            assert_eq!(
                classify(Failure::Amqp(error)),
                Verdict {
                    kind: *kind,
                    fix: *fix
                },
                "RabbitMQ: {what} ({error})"
            );
        }

        assert_eq!(classify(Failure::BadUrl), stop(FIX_URL));
        assert_eq!(classify(Failure::TlsFile), stop(FIX_TLS_FILE));
    }
}
