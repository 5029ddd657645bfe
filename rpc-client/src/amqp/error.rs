//! Why the link to the broker failed ([`LinkError`]), and why one address could not be
//! connected to ([`ConnectFailure`]).
//!
//! The messages are the ones users read (the calling layer's [`crate::Error`] and
//! `rpc-server`'s errors show them unchanged); text from the network in them is made
//! printable and bounded ([`crate::wire::printable`]).

use super::tls::TlsError;
use crate::text::printable;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Why connecting to the broker, or a round trip on an open connection, failed.
#[derive(Debug)]
pub enum LinkError {
    /// The broker could not be connected to or logged in to.
    Connect {
        /// The broker's URI, password masked.
        uri: String,
        /// Why (boxed: it is large, and errors are rare).
        failure: Box<ConnectFailure>,
    },
    /// Every one of several brokers failed: each one's masked URI and failure, in the order
    /// they were tried.
    AllBrokers(Vec<(String, ConnectFailure)>),
    /// There was no broker to connect to.
    NoBroker,
    /// A round trip got no answer in time (or a stop could not wait), so the connection was
    /// abandoned (its socket shut down): says what was waited for.
    Stalled(String),
    /// The connection went away: its socket closed or failed, the broker's heartbeats
    /// stopped, or the AMQP library's I/O thread ended. The library's words, as it gave them.
    Lost(String),
    /// The broker closed the connection or a channel (with its reply code and text), or the
    /// AMQP library failed otherwise: see [`AmqpError`].
    Amqp(AmqpError),
}

impl LinkError {
    /// Whether connecting again with the same settings cannot help: the broker refused the
    /// login or the virtual host (of every broker tried), or there is no broker.
    pub fn is_refusal(&self) -> bool {
        match self {
            LinkError::Connect { failure, .. } => failure.is_refusal(),
            LinkError::AllBrokers(failures) => failures.iter().all(|(_, f)| f.is_refusal()),
            LinkError::NoBroker => true,
            _ => false,
        }
    }

    /// Whether this means the connection is gone (lost, abandoned, or closed by the broker):
    /// what is recovered from by connecting again.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            LinkError::Stalled(_)
                | LinkError::Lost(_)
                | LinkError::Amqp(AmqpError::ConnectionClosed { .. })
        )
    }

    /// The reply code and text with which the broker closed the channel or the connection,
    /// if that is what happened. The text comes from the network: print it through
    /// [`crate::wire::printable`].
    pub fn broker_code(&self) -> Option<(u16, &str)> {
        match self {
            LinkError::Amqp(err) => err.broker_code(),
            _ => None,
        }
    }
}

/// "AMQP error: " and `text`, made printable.
fn amqp_error(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    write!(f, "AMQP error: {}", printable(text))
}

/// A failure of the AMQP layer that is neither a failed connect nor a lost connection, in our
/// own types: a close by the broker, with its reply code and text, or the AMQP library's
/// words for anything else. Its text reads as the library's did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmqpError {
    /// The broker closed the connection (e.g. 320 CONNECTION_FORCED).
    ConnectionClosed {
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text, as received: print it through [`crate::wire::printable`].
        message: String,
    },
    /// The broker closed a channel (e.g. 404 NOT_FOUND); the connection stays open.
    ChannelClosed {
        /// The channel's id.
        channel: u16,
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text, as received: print it through [`crate::wire::printable`].
        message: String,
    },
    /// Any other failure the AMQP library reports: its words, as it gave them.
    Other(String),
}

impl AmqpError {
    /// The reply code and text of a close by the broker.
    pub fn broker_code(&self) -> Option<(u16, &str)> {
        match self {
            AmqpError::ConnectionClosed { code, message }
            | AmqpError::ChannelClosed { code, message, .. } => Some((*code, message)),
            AmqpError::Other(_) => None,
        }
    }

    /// Whether the connection is gone (the broker closed it).
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, AmqpError::ConnectionClosed { .. })
    }
}

/// As the AMQP library words it, not made printable: show it through
/// [`crate::wire::printable`].
impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmqpError::ConnectionClosed { code, message } => {
                write!(
                    f,
                    "server closed connection (code={code} message={message})"
                )
            }
            AmqpError::ChannelClosed {
                channel,
                code,
                message,
            } => write!(
                f,
                "server closed channel {channel} (code={code}, message={message})"
            ),
            AmqpError::Other(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for AmqpError {}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Connect { uri, failure } => write!(f, "cannot connect to {uri}: {failure}"),
            LinkError::AllBrokers(failures) => {
                write!(f, "cannot connect to any of {} brokers: ", failures.len())?;
                f.write_str(&each_broker(failures))
            }
            LinkError::NoBroker => f.write_str("no broker to connect to"),
            LinkError::Stalled(why) => write!(
                f,
                "connection to the broker lost: {why}; the connection was abandoned"
            ),
            LinkError::Lost(text) => {
                write!(f, "connection to the broker lost: {}", printable(text))
            }
            LinkError::Amqp(err) => amqp_error(f, &err.to_string()),
        }
    }
}

/// The source's text is part of the message, so it is not repeated as a `source()`.
impl std::error::Error for LinkError {}

impl LinkError {
    /// A close by the broker, or another failure of the AMQP library, as an [`AmqpError`];
    /// `None` for failed connects and lost connections.
    pub fn amqp_error(&self) -> Option<AmqpError> {
        match self {
            LinkError::Amqp(err) => Some(err.clone()),
            _ => None,
        }
    }
}

/// The one conversion from the AMQP library's errors. For `rpc-server`: no stability promise.
#[doc(hidden)]
impl From<amiquip::Error> for LinkError {
    /// Sorts amiquip's errors: a close by the broker (with its code), a connection gone, or
    /// anything else.
    fn from(err: amiquip::Error) -> Self {
        use amiquip::Error as E;
        match err {
            E::ServerClosedConnection { code, message } => {
                LinkError::Amqp(AmqpError::ConnectionClosed { code, message })
            }
            E::ServerClosedChannel {
                channel_id,
                code,
                message,
            } => LinkError::Amqp(AmqpError::ChannelClosed {
                channel: channel_id,
                code,
                message,
            }),
            err if connection_gone(&err) => LinkError::Lost(err.to_string()),
            err => LinkError::Amqp(AmqpError::Other(err.to_string())),
        }
    }
}

/// For `rpc-server` and this crate's sessions: no stability promise.
#[doc(hidden)]
impl From<amiquip::Error> for crate::Error {
    /// Connection-level failures become [`crate::Error::ConnectionLost`], except a close by the broker,
    /// which stays an AMQP error so that its reply code can be read ([`crate::Error::broker_code`]);
    /// both exit 3.
    fn from(err: amiquip::Error) -> Self {
        LinkError::from(err).into()
    }
}

/// Whether `err` means the connection is gone (a close by the broker included).
fn connection_gone(err: &amiquip::Error) -> bool {
    use amiquip::Error as E;
    matches!(
        err,
        E::UnexpectedSocketClose
            | E::IoErrorReadingSocket { .. }
            | E::IoErrorWritingSocket { .. }
            | E::MissedServerHeartbeats
            | E::ServerClosedConnection { .. }
            | E::ClientClosedConnection
            | E::EventLoopDropped
            | E::EventLoopClientDropped
            | E::IoThreadPanic
    )
}

/// "uri: reason; uri: reason", as [`LinkError::AllBrokers`] lists them.
pub(crate) fn each_broker(failures: &[(String, ConnectFailure)]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|(uri, failure)| format!("{uri}: {failure}"))
        .collect();
    each.join("; ")
}

/// Why one address of a broker could not be connected to.
#[derive(Debug)]
pub enum ConnectFailure {
    /// The host name does not resolve.
    Resolve {
        /// The host.
        host: String,
        /// The resolver's reason.
        source: std::io::Error,
    },
    /// The host name resolves to no address.
    NoAddress(String),
    /// The TCP connect got no answer within the connect timeout.
    TcpTimeout(SocketAddr, Duration),
    /// The TCP connect failed (refused, unreachable, …).
    Tcp(SocketAddr, std::io::Error),
    /// A socket option or registration failed: what, and why.
    Socket(&'static str, std::io::Error),
    /// TLS could not be set up (the CA file).
    Tls(TlsError),
    /// The TLS handshake with this host failed: the TLS library's reason.
    TlsHandshake {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The broker refused this user's login.
    LoginRefused(String),
    /// The TLS and AMQP handshakes did not finish within the connect timeout.
    HandshakeTimeout(Duration),
    /// The connection's watchdog thread could not be started.
    Watchdog(std::io::Error),
    /// The broker refused this user the virtual host.
    VhostRefused {
        /// The virtual host.
        vhost: String,
        /// The user.
        user: String,
    },
    /// Any other failure the AMQP library reports: its words, as it gave them.
    Amqp(String),
}

impl ConnectFailure {
    /// The broker refused the login or the virtual host: trying again with the same settings
    /// cannot succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ConnectFailure::LoginRefused(_) | ConnectFailure::VhostRefused { .. }
        )
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Resolve { host, source } => {
                write!(f, "cannot resolve host '{host}': {source}")
            }
            ConnectFailure::NoAddress(host) => write!(f, "host '{host}' has no address"),
            ConnectFailure::TcpTimeout(addr, limit) => write!(
                f,
                "no answer from {addr} within {:.1}s",
                limit.as_secs_f64()
            ),
            ConnectFailure::Tcp(addr, e) => write!(f, "{addr}: {e}"),
            ConnectFailure::Socket(what, e) => write!(f, "cannot {what}: {e}"),
            ConnectFailure::Tls(e) => e.fmt(f),
            ConnectFailure::TlsHandshake { host, reason } => {
                write!(f, "TLS handshake with '{host}' failed: {reason}")
            }
            ConnectFailure::LoginRefused(user) => write!(
                f,
                "login refused for user '{user}' (check the user name and password)"
            ),
            ConnectFailure::HandshakeTimeout(limit) => write!(
                f,
                "no AMQP handshake within {:.1}s (is this a RabbitMQ port?)",
                limit.as_secs_f64()
            ),
            ConnectFailure::VhostRefused { vhost, user } => {
                write!(f, "access to vhost '{vhost}' refused for user '{user}'")
            }
            ConnectFailure::Watchdog(e) => {
                write!(f, "cannot start the connection's watchdog: {e}")
            }
            ConnectFailure::Amqp(text) => f.write_str(&printable(text)),
        }
    }
}

/// The source's text is part of the message, so it is not repeated as a `source()`.
impl std::error::Error for ConnectFailure {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::{open_first, BrokerOptions};
    use std::net::TcpListener;

    /// A loopback port nothing listens on (bound, then let go).
    fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn options(port: u16) -> BrokerOptions {
        BrokerOptions {
            host: "127.0.0.1".into(),
            port,
            connect_timeout: Duration::from_secs(5),
            ..BrokerOptions::default()
        }
    }

    #[test]
    fn a_refused_connect_names_the_broker_and_the_address() {
        let port = closed_port();
        let Err(err) = open_first(&[options(port)], 0) else {
            panic!("connected to a closed port");
        };
        assert!(
            matches!(&err, LinkError::Connect { failure, .. }
                if matches!(**failure, ConnectFailure::Tcp(addr, _) if addr.port() == port)),
            "{err:?}"
        );
        let text = err.to_string();
        let prefix =
            format!("cannot connect to amqp://guest:****@127.0.0.1:{port}/%2F: 127.0.0.1:{port}: ");
        assert!(text.starts_with(&prefix), "{text}");
        assert!(!err.is_refusal() && !err.is_connection_loss());
    }

    #[test]
    fn several_brokers_failing_are_listed_in_the_order_tried() {
        let (first, second) = (closed_port(), closed_port());
        let brokers = [options(first), options(second)];
        let Err(err) = open_first(&brokers, 1) else {
            panic!("connected to a closed port");
        };
        let LinkError::AllBrokers(failures) = &err else {
            panic!("{err:?}");
        };
        let uris: Vec<&str> = failures.iter().map(|(uri, _)| uri.as_str()).collect();
        assert_eq!(
            uris,
            [brokers[1].display_uri(), brokers[0].display_uri()],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot connect to any of 2 brokers: {}: 127.0.0.1:{second}: ",
                brokers[1].display_uri()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("; {}: ", brokers[0].display_uri())),
            "{text}"
        );
        assert!(!err.is_refusal());
    }

    #[test]
    fn no_broker_is_a_refusal() {
        let Err(err) = open_first(&[], 0) else {
            panic!("connected to nothing");
        };
        assert!(matches!(err, LinkError::NoBroker), "{err:?}");
        assert_eq!(err.to_string(), "no broker to connect to");
        assert!(err.is_refusal());
    }

    #[test]
    fn refused_logins_are_refusals_only_if_every_broker_refused() {
        let login = || ConnectFailure::LoginRefused("guest".into());
        let vhost = || ConnectFailure::VhostRefused {
            vhost: "/".into(),
            user: "guest".into(),
        };
        let timeout = || ConnectFailure::HandshakeTimeout(Duration::from_millis(2500));
        let one = LinkError::Connect {
            uri: "amqp://guest:****@h:5672/%2F".into(),
            failure: Box::new(login()),
        };
        assert!(one.is_refusal());
        assert_eq!(
            one.to_string(),
            "cannot connect to amqp://guest:****@h:5672/%2F: login refused for user 'guest' \
             (check the user name and password)"
        );
        let all = LinkError::AllBrokers(vec![("a".into(), login()), ("b".into(), vhost())]);
        assert!(all.is_refusal());
        assert_eq!(
            all.to_string(),
            "cannot connect to any of 2 brokers: a: login refused for user 'guest' (check the \
             user name and password); b: access to vhost '/' refused for user 'guest'"
        );
        let mixed = LinkError::AllBrokers(vec![("a".into(), login()), ("b".into(), timeout())]);
        assert!(!mixed.is_refusal());
        assert!(mixed
            .to_string()
            .ends_with("b: no AMQP handshake within 2.5s (is this a RabbitMQ port?)"));
    }

    #[test]
    fn amiquip_errors_are_sorted() {
        let lost = LinkError::from(amiquip::Error::UnexpectedSocketClose);
        assert!(matches!(lost, LinkError::Lost(_)) && lost.is_connection_loss());
        assert_eq!(
            lost.to_string(),
            "connection to the broker lost: underlying socket closed unexpectedly"
        );
        let heartbeats = LinkError::from(amiquip::Error::MissedServerHeartbeats);
        assert!(heartbeats.is_connection_loss(), "{heartbeats:?}");

        let closed = LinkError::from(amiquip::Error::ServerClosedConnection {
            code: 320,
            message: "CONNECTION_FORCED - shutdown".into(),
        });
        assert!(closed.is_connection_loss());
        assert_eq!(
            closed.broker_code(),
            Some((320, "CONNECTION_FORCED - shutdown"))
        );
        assert_eq!(
            closed.to_string(),
            "AMQP error: server closed connection (code=320 message=CONNECTION_FORCED - shutdown)"
        );

        let channel = LinkError::from(amiquip::Error::ServerClosedChannel {
            channel_id: 1,
            code: 404,
            message: "NOT_FOUND - no queue 'q'".into(),
        });
        assert!(matches!(
            channel,
            LinkError::Amqp(AmqpError::ChannelClosed {
                channel: 1,
                code: 404,
                ..
            })
        ));
        assert!(!channel.is_connection_loss() && !channel.is_refusal());
        assert_eq!(
            channel.to_string(),
            "AMQP error: server closed channel 1 (code=404, message=NOT_FOUND - no queue 'q')"
        );

        let other = LinkError::from(amiquip::Error::FrameUnexpected);
        assert!(matches!(other, LinkError::Amqp(_)) && !other.is_connection_loss());
        assert_eq!(
            other.to_string(),
            "AMQP error: AMQP protocol error - received unexpected frame"
        );

        let stalled = LinkError::Stalled("no answer within 2.0s to the channel open".into());
        assert!(stalled.is_connection_loss());
        assert_eq!(
            stalled.to_string(),
            "connection to the broker lost: no answer within 2.0s to the channel open; the \
             connection was abandoned"
        );
    }

    #[test]
    fn broker_text_is_printable_and_bounded() {
        let closed = LinkError::from(amiquip::Error::ServerClosedConnection {
            code: 541,
            message: format!("\x1b[2J\r\nforged {}", "x".repeat(10_000)),
        });
        let text = closed.to_string();
        assert!(!text.chars().any(char::is_control), "{text}");
        assert!(
            text.starts_with(
                "AMQP error: server closed connection (code=541 message=?[2J??forged x"
            ),
            "{text}"
        );
        assert!(text.chars().count() < 400 && text.ends_with('…'), "{text}");
        // The code and the raw text stay readable for decisions.
        assert_eq!(closed.broker_code().map(|(code, _)| code), Some(541));
    }
}
