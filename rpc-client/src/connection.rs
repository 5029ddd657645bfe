//! Opening an AMQP connection with `TCP_NODELAY` and a connect timeout, to one broker or to the
//! first of several that answers.
//!
//! amiquip's `Connection::insecure_open` leaves Nagle's algorithm on; a request/reply protocol
//! then waits for the peer's delayed ACK on every round trip (measured: about 20–25 sequential
//! calls/s instead of thousands). So we open the TCP stream ourselves, with a timeout, switch
//! Nagle off and hand the stream to amiquip.

use crate::error::Error;
use crate::tls::{self, TlsError};
use crate::uri::BrokerOptions;
use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};
use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connects and logs in to the broker described by `options`.
///
/// Tries every address the host resolves to, in order, each with `options.connect_timeout`
/// for the TCP connect and again for the AMQP handshake. Errors name the masked URI.
pub fn connect(options: &BrokerOptions) -> Result<Connection, Error> {
    let fail = |reason: Failure| Error::Connect {
        uri: options.display_uri(),
        reason: reason.to_string(),
    };
    let addrs: Vec<SocketAddr> = (options.host.as_str(), options.port)
        .to_socket_addrs()
        .map_err(|e| fail(Failure::Resolve(options.host.clone(), e)))?
        .collect();
    let mut last = Failure::NoAddress(options.host.clone());
    for addr in addrs {
        match open(addr, options) {
            Ok(connection) => {
                log::debug!("connected to {options} ({addr})");
                return Ok(connection);
            }
            Err(failure) => {
                log::debug!("connecting to {addr} failed: {failure}");
                last = failure;
            }
        }
    }
    Err(fail(last))
}

/// Connects to the first broker of `brokers` that answers, trying them in order starting at
/// `start` (wrapping around). Returns the connection and the index of the broker it reached;
/// fails only when every broker failed, with each one's reason.
pub fn connect_first(
    brokers: &[BrokerOptions],
    start: usize,
) -> Result<(Connection, usize), Error> {
    let count = brokers.len();
    if count == 0 {
        return Err(Error::Config("no broker to connect to".into()));
    }
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

/// Why one address could not be connected to.
enum Failure {
    Resolve(String, std::io::Error),
    NoAddress(String),
    TcpTimeout(SocketAddr, Duration),
    Tcp(SocketAddr, std::io::Error),
    Socket(&'static str, std::io::Error),
    Tls(TlsError),
    TlsHandshake(String, String),
    LoginRefused(String),
    HandshakeTimeout(Duration),
    VhostRefused { vhost: String, user: String },
    Amqp(amiquip::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Resolve(host, e) => write!(f, "cannot resolve host '{host}': {e}"),
            Failure::NoAddress(host) => write!(f, "host '{host}' has no address"),
            Failure::TcpTimeout(addr, limit) => write!(
                f,
                "no answer from {addr} within {:.1}s",
                limit.as_secs_f64()
            ),
            Failure::Tcp(addr, e) => write!(f, "{addr}: {e}"),
            Failure::Socket(what, e) => write!(f, "cannot {what}: {e}"),
            Failure::Tls(e) => e.fmt(f),
            Failure::TlsHandshake(host, e) => write!(f, "TLS handshake with '{host}' failed: {e}"),
            Failure::LoginRefused(user) => write!(
                f,
                "login refused for user '{user}' (check the user name and password)"
            ),
            Failure::HandshakeTimeout(limit) => write!(
                f,
                "no AMQP handshake within {:.1}s (is this a RabbitMQ port?)",
                limit.as_secs_f64()
            ),
            Failure::VhostRefused { vhost, user } => {
                write!(f, "access to vhost '{vhost}' refused for user '{user}'")
            }
            Failure::Amqp(e) => e.fmt(f),
        }
    }
}

fn open(addr: SocketAddr, options: &BrokerOptions) -> Result<Connection, Failure> {
    let stream =
        TcpStream::connect_timeout(&addr, options.connect_timeout).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                Failure::TcpTimeout(addr, options.connect_timeout)
            }
            _ => Failure::Tcp(addr, e),
        })?;
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::Socket("set TCP_NODELAY", e))?;
    let stream = mio::net::TcpStream::from_stream(stream)
        .map_err(|e| Failure::Socket("register the socket", e))?;
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
        let connector = tls::connector(options.tls_ca.as_deref()).map_err(Failure::Tls)?;
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
            Failure::TlsHandshake(options.host.clone(), source.to_string())
        }
        amiquip::Error::InvalidCredentials => Failure::LoginRefused(options.user.clone()),
        amiquip::Error::ConnectionTimeout => Failure::HandshakeTimeout(options.connect_timeout),
        amiquip::Error::ServerClosedConnection { code: 530, .. } => Failure::VhostRefused {
            vhost: options.vhost.clone(),
            user: options.user.clone(),
        },
        other => Failure::Amqp(other),
    })
}
