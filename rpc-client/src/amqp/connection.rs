//! Opening an AMQP connection with `TCP_NODELAY`, within one time limit for the TCP connect, TLS
//! and the AMQP handshake together, to one broker or to the first of several that answers.
//! [`open_link`] also hands over the connection's [`Watchdog`], which bounds its later calls.
//!
//! amiquip's `Connection::insecure_open` leaves Nagle's algorithm on; a request/reply protocol
//! then waits for the peer's delayed ACK on every round trip (measured: about 20–25 sequential
//! calls/s instead of thousands). So we open the TCP stream ourselves, with a timeout, switch
//! Nagle off and hand the stream to amiquip.

use super::tls::{self, TlsError};
use super::uri::BrokerOptions;
use super::watchdog::Watchdog;
use crate::error::Error;
use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};
use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// An open connection and the watchdog that bounds its blocking calls.
///
/// Field order is drop order: the connection closes while the watchdog still watches (arm it
/// first if the close must be bounded).
pub struct Link {
    /// The AMQP connection.
    pub connection: Connection,
    /// Shuts the connection's socket down when a bounded call overruns.
    pub watchdog: Watchdog,
}

impl Link {
    /// Bounds what follows, typically dropping the connection and its channels (amiquip waits
    /// for the broker's answer to each close): at most `limit`, then the socket is shut down.
    pub fn bound_close(&self, limit: Duration) {
        self.watchdog.arm(Instant::now() + limit, "to the close");
    }
}

/// Like [`open_first`], without the watchdog.
pub fn connect_first(
    brokers: &[BrokerOptions],
    start: usize,
) -> Result<(Connection, usize), Error> {
    open_first(brokers, start).map(|(link, index)| (link.connection, index))
}

/// Connects and logs in to the broker described by `options`.
///
/// Tries every address the host resolves to, in order. `options.connect_timeout` bounds the
/// TCP connect, TLS and the AMQP handshake of one address together, however slowly the peer
/// sends its bytes. Errors name the masked URI.
pub fn open_link(options: &BrokerOptions) -> Result<Link, Error> {
    let fail = |reason: Failure| Error::Connect {
        uri: options.display_uri(),
        refused: matches!(
            reason,
            Failure::LoginRefused(_) | Failure::VhostRefused { .. }
        ),
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
pub fn open_first(brokers: &[BrokerOptions], start: usize) -> Result<(Link, usize), Error> {
    let count = brokers.len();
    if count == 0 {
        return Err(Error::Config("no broker to connect to".into()));
    }
    let mut reasons = Vec::new();
    let mut all_refused = true;
    for offset in 0..count {
        let index = (start + offset) % count;
        match open_link(&brokers[index]) {
            Ok(connection) => return Ok((connection, index)),
            Err(Error::Connect {
                uri,
                reason,
                refused,
            }) if count > 1 => {
                log::warn!("cannot connect to {uri}: {reason}");
                reasons.push(format!("{uri}: {reason}"));
                all_refused &= refused;
            }
            Err(err) => return Err(err),
        }
    }
    Err(Error::Connect {
        uri: format!("any of {count} brokers"),
        reason: reasons.join("; "),
        refused: all_refused,
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
    Watchdog(std::io::Error),
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
            Failure::Watchdog(e) => write!(f, "cannot start the connection's watchdog: {e}"),
            Failure::Amqp(e) => e.fmt(f),
        }
    }
}

fn open(addr: SocketAddr, options: &BrokerOptions) -> Result<Link, Failure> {
    let limit = options.connect_timeout;
    let deadline = Instant::now() + limit;
    let stream = TcpStream::connect_timeout(&addr, limit).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            Failure::TcpTimeout(addr, limit)
        }
        _ => Failure::Tcp(addr, e),
    })?;
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::Socket("set TCP_NODELAY", e))?;
    let watchdog = Watchdog::new(
        stream
            .try_clone()
            .map_err(|e| Failure::Socket("clone the socket", e))?,
    )
    .map_err(Failure::Watchdog)?;
    let stream = mio::net::TcpStream::from_stream(stream)
        .map_err(|e| Failure::Socket("register the socket", e))?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let amqp_options = ConnectionOptions::<Auth>::default()
        .auth(Auth::Plain {
            username: options.user.clone(),
            password: options.password.clone(),
        })
        .virtual_host(options.vhost.clone())
        .heartbeat(options.heartbeat)
        .connection_timeout(Some(remaining.max(Duration::from_millis(1))))
        .information(Some(options.client_name.clone()));
    // TLS and the handshake share what is left of the limit, however slowly bytes arrive.
    watchdog.arm(deadline, "to the handshake");
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
    watchdog.disarm();
    let timed_out = watchdog.fired().is_some();
    // amiquip reports any failure after the credentials were sent as a refused login.
    let connection = opened.map_err(|err| match err {
        amiquip::Error::TlsHandshake { source } => {
            Failure::TlsHandshake(options.host.clone(), source.to_string())
        }
        amiquip::Error::InvalidCredentials => Failure::LoginRefused(options.user.clone()),
        amiquip::Error::ConnectionTimeout => Failure::HandshakeTimeout(limit),
        amiquip::Error::ServerClosedConnection { code: 530, .. } => Failure::VhostRefused {
            vhost: options.vhost.clone(),
            user: options.user.clone(),
        },
        _ if timed_out => Failure::HandshakeTimeout(limit),
        other => Failure::Amqp(other),
    })?;
    Ok(Link {
        connection,
        watchdog,
    })
}
