//! Why an `amqps://` broker reset a connection. RabbitMQ (Erlang's TLS) answers a client that
//! lacks the certificate it demands with an alert and an abrupt close; by then the client has
//! sent its first AMQP bytes, which the broker never read, so the close is a TCP reset and the
//! alert is lost with it. The connection then looks like a broker that is going away. A second
//! handshake that sends nothing after it lets the alert arrive before the close, so the reason
//! can be read from the broker itself instead of guessed.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

/// How long the probe waits for the broker to speak or close after the handshake: an Erlang
/// broker sends its alert at once.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// Whether `error` is a connection the peer closed or reset, the one shape the probe explains.
pub(super) fn worth_probing(uri: &AMQPUri, error: &lapin::Error) -> bool {
    uri.scheme == AMQPScheme::AMQPS
        && matches!(
            error.kind(),
            lapin::ErrorKind::IOError(io) if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        )
}

/// The error the broker's TLS layer gives a handshake with `tls` that then only listens (an
/// alert, as rustls reports it), or `None` if it gives none within [`PROBE_WAIT`].
pub(super) async fn handshake_refusal(uri: &AMQPUri, tls: &OwnedTLSConfig) -> Option<lapin::Error> {
    let (uri, tls) = (uri.clone(), tls.clone());
    let refusal = tokio::task::spawn_blocking(move || {
        // A failed handshake is not the probe's to explain: the real connection reported it.
        let mut stream = uri.connect_with_config(tls.as_ref()).ok()?;
        let give_up = Instant::now() + PROBE_WAIT;
        let mut buffer = [0u8; 512];
        while Instant::now() < give_up {
            match stream.read(&mut buffer) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Some(error),
                Ok(_) => return None,
            }
        }
        None
    });
    let error = refusal.await.ok().flatten()?;
    Some(lapin::ErrorKind::IOError(std::sync::Arc::new(error)).into())
}
