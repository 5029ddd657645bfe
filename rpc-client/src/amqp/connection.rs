//! Opening an AMQP connection with `TCP_NODELAY`, within one time limit for the TCP connect, TLS
//! and the AMQP handshake together, to one broker or to the first of several that answers.
//! [`open_link`] also hands over the connection's [`Watchdog`], which bounds its later calls.
//!
//! amiquip's `Connection::insecure_open` leaves Nagle's algorithm on; a request/reply protocol
//! then waits for the peer's delayed ACK on every round trip (measured: about 20–25 sequential
//! calls/s instead of thousands). So we open the TCP stream ourselves, with a timeout, switch
//! Nagle off and hand the stream to amiquip (TLS over it is ours too), with every byte from the
//! broker read through the header depth guard (`depth`: no message's headers can overflow
//! amiquip's decoder).

use super::depth::DepthGuard;
use super::error::{ConnectFailure, LinkError};
use super::tls;
use super::uri::BrokerOptions;
use super::watchdog::Watchdog;
use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};

/// The AMQP library's log target (its crate's name), for log filters.
#[cfg(any(feature = "cli", feature = "test-support"))]
pub(crate) const LIBRARY_LOG: &str = "amiquip";

/// The log target of the AMQP library's handshake, which logs the SASL response, password
/// included, at debug level.
#[cfg(any(feature = "cli", feature = "test-support"))]
pub(crate) const HANDSHAKE_LOG: &str = "amiquip::io_loop::handshake_state";
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
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
) -> Result<(Connection, usize), LinkError> {
    open_first(brokers, start).map(|(link, index)| (link.connection, index))
}

/// Connects and logs in to the broker described by `options`.
///
/// Tries every address the host resolves to, in order. `options.connect_timeout` bounds the
/// TCP connect, TLS and the AMQP handshake of one address together, however slowly the peer
/// sends its bytes. Errors name the masked URI.
pub(super) fn open_link(options: &BrokerOptions) -> Result<Link, LinkError> {
    let fail = |failure: ConnectFailure| LinkError::Connect {
        uri: options.display_uri(),
        failure: Box::new(failure),
    };
    let addrs: Vec<SocketAddr> = (options.host.as_str(), options.port)
        .to_socket_addrs()
        .map_err(|source| {
            fail(ConnectFailure::Resolve {
                host: options.host.clone(),
                source,
            })
        })?
        .collect();
    let mut last = ConnectFailure::NoAddress(options.host.clone());
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
pub fn open_first(brokers: &[BrokerOptions], start: usize) -> Result<(Link, usize), LinkError> {
    let count = brokers.len();
    if count == 0 {
        return Err(LinkError::NoBroker);
    }
    let mut failures = Vec::new();
    for offset in 0..count {
        let index = (start + offset) % count;
        match open_link(&brokers[index]) {
            Ok(connection) => return Ok((connection, index)),
            Err(LinkError::Connect { uri, failure }) if count > 1 => {
                log::warn!("cannot connect to {uri}: {failure}");
                failures.push((uri, *failure));
            }
            Err(err) => return Err(err),
        }
    }
    Err(LinkError::AllBrokers(failures))
}

fn open(addr: SocketAddr, options: &BrokerOptions) -> Result<Link, ConnectFailure> {
    let limit = options.connect_timeout;
    let deadline = Instant::now() + limit;
    let stream = TcpStream::connect_timeout(&addr, limit).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            ConnectFailure::TcpTimeout(addr, limit)
        }
        _ => ConnectFailure::Tcp(addr, e),
    })?;
    stream
        .set_nodelay(true)
        .map_err(|e| ConnectFailure::Socket("set TCP_NODELAY", e))?;
    let watchdog = Watchdog::new(
        stream
            .try_clone()
            .map_err(|e| ConnectFailure::Socket("clone the socket", e))?,
    )
    .map_err(ConnectFailure::Watchdog)?;
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
    let opened = handshake(stream, options, amqp_options);
    watchdog.disarm();
    let timed_out = watchdog.fired().is_some();
    let opened = match opened {
        Err(_) if timed_out => return Err(ConnectFailure::HandshakeTimeout(limit)),
        other => other?,
    };
    // amiquip reports any failure after the credentials were sent as a refused login.
    let connection = opened.map_err(|err| match err {
        amiquip::Error::InvalidCredentials => ConnectFailure::LoginRefused(options.user.clone()),
        amiquip::Error::ConnectionTimeout => ConnectFailure::HandshakeTimeout(limit),
        amiquip::Error::ServerClosedConnection { code: 530, .. } => ConnectFailure::VhostRefused {
            vhost: options.vhost.clone(),
            user: options.user.clone(),
        },
        _ if timed_out => ConnectFailure::HandshakeTimeout(limit),
        other => ConnectFailure::Amqp(other.to_string()),
    })?;
    Ok(Link {
        connection,
        watchdog,
    })
}

/// TLS (if `options` ask for it) and the AMQP handshake over `stream`, whose bytes from the
/// broker pass the header depth guard (see `depth`). So TLS is ours, not amiquip's, which
/// would sit below the guard. Only a failed TLS handshake is an error here.
fn handshake(
    stream: TcpStream,
    options: &BrokerOptions,
    amqp_options: ConnectionOptions<Auth>,
) -> Result<Result<Connection, amiquip::Error>, ConnectFailure> {
    let fd = stream.as_raw_fd();
    let tuning = ConnectionTuning::default();
    if !options.tls {
        nonblocking(&stream)?;
        let guarded = DepthGuard::new(stream, fd);
        return Ok(Connection::insecure_open_stream(
            guarded,
            amqp_options,
            tuning,
        ));
    }
    let connector = tls::connector(options.tls_ca.as_deref()).map_err(ConnectFailure::Tls)?;
    // Blocking, within the watchdog's limit.
    let stream = connector.connect(&options.host, stream).map_err(|err| {
        let reason = match err {
            native_tls::HandshakeError::Failure(err) => err.to_string(),
            native_tls::HandshakeError::WouldBlock(_) => "the handshake stalled".into(),
        };
        ConnectFailure::TlsHandshake {
            host: options.host.clone(),
            reason,
        }
    })?;
    nonblocking(stream.get_ref())?;
    let guarded = DepthGuard::new(stream, fd);
    Ok(Connection::insecure_open_stream(
        guarded,
        amqp_options,
        tuning,
    ))
}

/// amiquip's I/O loop reads and writes until the socket would block.
fn nonblocking(stream: &TcpStream) -> Result<(), ConnectFailure> {
    stream
        .set_nonblocking(true)
        .map_err(|e| ConnectFailure::Socket("make the socket non-blocking", e))
}
