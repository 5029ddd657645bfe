//! Opening an AMQP connection with `TCP_NODELAY` and a connect timeout.
//!
//! amiquip's `Connection::insecure_open` leaves Nagle's algorithm on; a request/reply protocol
//! then waits for the peer's delayed ACK on every round trip (measured: about 20–25 sequential
//! calls/s instead of thousands). So we open the TCP stream ourselves, with a timeout, switch
//! Nagle off and hand the stream to amiquip.

use crate::config::BrokerOptions;
use crate::error::Error;
use amiquip::{
    Auth, Channel, Connection, ConnectionOptions, ConnectionTuning, ConsumerMessage,
    ConsumerOptions, QueueDeclareOptions,
};
use crossbeam_channel::Receiver;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

/// Connects and logs in to the broker described by `options`.
///
/// Tries every address the host resolves to, in order, each with `options.connect_timeout`
/// for the TCP connect and again for the AMQP handshake. Errors name the masked URI.
pub fn connect(options: &BrokerOptions) -> Result<Connection, Error> {
    let fail = |reason: String| Error::Connect {
        uri: options.display_uri(),
        reason,
    };
    let addrs: Vec<SocketAddr> = (options.host.as_str(), options.port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve host '{}': {e}", options.host)))?
        .collect();
    let mut last_error = format!("host '{}' has no address", options.host);
    for addr in addrs {
        match open(addr, options) {
            Ok(connection) => {
                log::debug!("connected to {options} ({addr})");
                return Ok(connection);
            }
            Err(reason) => {
                log::debug!("connecting to {addr} failed: {reason}");
                last_error = reason;
            }
        }
    }
    Err(fail(last_error))
}

/// Connects to the first broker of `brokers` that answers, trying them in order starting at
/// `start` (wrapping around). Returns the connection and the index of the broker it reached;
/// fails only when every broker failed, with each one's reason.
pub fn connect_first(
    brokers: &[BrokerOptions],
    start: usize,
) -> Result<(Connection, usize), Error> {
    let count = brokers.len();
    let mut reasons = Vec::new();
    for offset in 0..count {
        let index = (start + offset) % count;
        match connect(&brokers[index]) {
            Ok(connection) => return Ok((connection, index)),
            Err(Error::Connect { uri, reason }) if count > 1 => {
                log::warn!("cannot connect to {uri}: {reason}");
                reasons.push(format!("{uri}: {reason}"));
            }
            Err(err) => return Err(err),
        }
    }
    Err(Error::Connect {
        uri: format!("any of {count} brokers"),
        reason: reasons.join("; "),
    })
}

fn open(addr: SocketAddr, options: &BrokerOptions) -> Result<Connection, String> {
    let stream =
        TcpStream::connect_timeout(&addr, options.connect_timeout).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => format!(
                "no answer from {addr} within {:.1}s",
                options.connect_timeout.as_secs_f64()
            ),
            _ => format!("{addr}: {e}"),
        })?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let stream = mio::net::TcpStream::from_stream(stream).map_err(|e| e.to_string())?;
    let amqp_options = ConnectionOptions::<Auth>::default()
        .auth(Auth::Plain {
            username: options.user.clone(),
            password: options.password.clone(),
        })
        .virtual_host(options.vhost.clone())
        .heartbeat(options.heartbeat)
        .connection_timeout(Some(options.connect_timeout))
        .information(Some(options.client_name.clone()));
    let opened = if options.tls {
        let connector = tls_connector(options)?;
        Connection::open_tls_stream(
            connector,
            &options.host,
            stream,
            amqp_options,
            ConnectionTuning::default(),
        )
    } else {
        Connection::insecure_open_stream(stream, amqp_options, ConnectionTuning::default())
    };
    opened.map_err(|err| match err {
        amiquip::Error::TlsHandshake { source } => {
            format!("TLS handshake with '{}' failed: {source}", options.host)
        }
        amiquip::Error::InvalidCredentials => format!(
            "login refused for user '{}' (check the user name and password)",
            options.user
        ),
        amiquip::Error::ConnectionTimeout => format!(
            "no AMQP handshake within {:.1}s (is this a RabbitMQ port?)",
            options.connect_timeout.as_secs_f64()
        ),
        amiquip::Error::ServerClosedConnection { code: 530, .. } => format!(
            "access to vhost '{}' refused for user '{}'",
            options.vhost, options.user
        ),
        other => other.to_string(),
    })
}

/// A TLS connector trusting the system's CAs plus `options.tls_ca`; names are checked.
fn tls_connector(options: &BrokerOptions) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = &options.tls_ca {
        for certificate in load_ca(path)? {
            builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up TLS: {e}"))
}

/// Reads every certificate of a PEM file (a CA bundle may hold several).
pub fn load_ca(path: &std::path::Path) -> Result<Vec<native_tls::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read --tls-ca {}: {e}", path.display()))?;
    let certificates = native_tls::Certificate::stack_from_pem(&pem).map_err(|e| {
        format!(
            "--tls-ca {} is not a PEM certificate file: {e}",
            path.display()
        )
    })?;
    if certificates.is_empty() {
        return Err(format!("--tls-ca {} holds no certificate", path.display()));
    }
    Ok(certificates)
}

/// Declares a callback queue (exclusive, auto-delete, named by the broker) and consumes it
/// without acks; returns its name and the receiver of the replies that arrive on it.
pub fn callback_queue(
    channel: &Channel,
) -> Result<(String, Receiver<ConsumerMessage>), amiquip::Error> {
    let name = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        )?
        .name()
        .to_string();
    let replies = consume(
        channel,
        &name,
        ConsumerOptions {
            no_ack: true,
            exclusive: true,
            ..ConsumerOptions::default()
        },
    )?;
    Ok((name, replies))
}

/// Starts consuming `queue` on `channel` and returns the receiver of its messages.
///
/// amiquip's `Consumer` borrows its channel and cancels itself when dropped, and amiquip's I/O
/// thread treats a consumer whose receiver is gone as a fatal connection error (it can still be
/// delivering, or sending `ClientCancelled`, after a cancel returns). So instead of a
/// `Consumer`, callers get a receiver they can keep next to the channel in one struct; the
/// subscription ends when the channel or connection closes. What stays allocated is the
/// consumer tag and a receiver handle, once per call of this function.
pub fn consume(
    channel: &Channel,
    queue: &str,
    options: ConsumerOptions,
) -> Result<Receiver<ConsumerMessage>, amiquip::Error> {
    let consumer = channel.basic_consume(queue, options)?;
    let receiver = consumer.receiver().clone();
    std::mem::forget(consumer);
    Ok(receiver)
}
