//! Why a server stopped with an error ([`Error`]), and the exit codes of `rpc-server`
//! ([`exit_code`]).

use rpc_client::amqp::LinkError;
use rpc_client::AmqpError;
use std::fmt;

/// Process exit codes of `rpc-server`, defined once: `--help` prints [`exit_code::TABLE`] and a
/// test checks that the table in `rpc-server/README.md` says the same.
pub mod exit_code {
    /// The server gave up (see [`crate::Error`]).
    pub const FAILURE: u8 = 1;
    /// Bad command-line arguments (clap's own usage errors use 2 as well).
    pub const USAGE: u8 = 2;
    /// Stopped on a signal, but the broker prevented the clean close.
    pub const UNCLEAN_STOP: u8 = 3;
    /// The broker refused something that retrying cannot fix (see [`crate::Error::Refused`]).
    pub const REFUSED: u8 = 4;
    /// A second SIGINT/SIGTERM ended the server without its clean stop.
    pub const FORCED: u8 = 130;

    /// Every exit code of `rpc-server` with its meaning (Markdown), as `rpc-server/README.md` lists them.
    pub const TABLE: &[(u8, &str)] = &[
        (0, "stopped cleanly after SIGINT or SIGTERM"),
        (
            FAILURE,
            "gave up: `--max-retries` connection attempts failed in a row, or the signal handler could not be installed",
        ),
        (
            USAGE,
            "bad arguments (a malformed `--uri`, an unreadable `--tls-ca`, a queue name with a line break, over 255 bytes, or over 160 with characters beyond ASCII, a `--metrics-addr` that cannot be listened on, …)",
        ),
        (
            UNCLEAN_STOP,
            "stopped after SIGINT or SIGTERM, but the broker prevented a clean close (within the stop bound; unacked requests go back to the queue)",
        ),
        (
            REFUSED,
            "the broker refused what retrying cannot fix: the login, the vhost, a permission, or a deprecated feature such as `--transient` on RabbitMQ 4.3; the message says which",
        ),
        (FORCED, "a second SIGINT or SIGTERM ended it at once"),
    ];
}

/// How [`Error::ConsumerTimeout`]'s message begins: the broker cancelled the consumer (a
/// `basic.cancel`) while the request queue still exists and a request was in hand, or had
/// just taken long.
pub const CONSUMER_TIMEOUT_CANCEL: &str =
    "the broker cancelled our consumer while the queue still exists, after a long request";

/// Why [`crate::run`] returned an error.
#[derive(Debug)]
pub enum Error {
    /// The options are unusable.
    Config(String),
    /// Connecting failed, or the connection was lost, or the broker closed it or a channel
    /// (the AMQP layer both binaries share reports it).
    Connection(LinkError),
    /// A broker operation failed: what we were doing, and why.
    Broker {
        /// What the server was doing, e.g. "cannot set the prefetch".
        doing: String,
        /// Why (boxed: it is large, and errors are rare).
        source: Box<LinkError>,
    },
    /// The request consumer stopped: cancelled by the broker, or its channel went away.
    ConsumerStopped(String),
    /// The broker cancelled the consumer in a way that was most likely a consumer timeout
    /// (see [`CONSUMER_TIMEOUT_CANCEL`]): the queue, the requests in hand, the longest one.
    ConsumerTimeout(String),
    /// The broker refused something that trying again with the same settings cannot fix, so
    /// the server stopped instead of reconnecting: the login or the virtual host (403/530 at
    /// connect), a permission (403 ACCESS_REFUSED), an exclusive queue of another connection
    /// (405 RESOURCE_LOCKED), a denied deprecated feature (541, e.g. transient non-exclusive
    /// queues on RabbitMQ 4.3).
    Refused {
        /// What to do about it, one line.
        hint: String,
        /// The error as it happened.
        cause: Box<Error>,
    },
    /// A stop was asked for (SIGINT/SIGTERM, or the shutdown channel) and the server stopped,
    /// but the broker prevented a clean close: unacked requests go back to the queue.
    UncleanStop(Box<Error>),
}

impl Error {
    /// A [`Error::Broker`] for `doing`, for `map_err` on the AMQP layer's errors.
    pub fn broker<E: Into<LinkError>>(doing: impl Into<String>) -> impl FnOnce(E) -> Error {
        let doing = doing.into();
        move |source| Error::Broker {
            doing,
            source: Box::new(source.into()),
        }
    }

    /// If retrying with the same settings cannot fix this error: what to do about it.
    /// Everything else (connection refused or lost, a node down, a stalled link, a queue
    /// deleted under us, a channel closed for a consumer timeout) is worth a reconnect.
    pub fn refusal(&self) -> Option<String> {
        let link = self.link_error()?;
        if link.is_refusal() {
            return Some("check the user name, password and virtual host".into());
        }
        let (code, text) = link.broker_code()?;
        let hint = match code {
            403 => {
                "access refused: check the user's permissions (configure, write, read) on \
                    the vhost and the request queue"
            }
            405 => "the request queue is exclusive to another connection",
            530 => "the user may not use this virtual host",
            541 if text.contains("transient_nonexcl_queues") => {
                "the broker denies transient non-exclusive queues (RabbitMQ 4.3's default): \
                 run without --transient"
            }
            541 if text.contains("deprecated") => "the broker denies a deprecated feature",
            _ => return None,
        };
        Some(hint.to_string())
    }

    /// If the broker stopped the consumer because a request was not acked within its consumer
    /// timeout: the broker's words. RabbitMQ up to 4.2 closes the channel (406
    /// "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value
    /// used: ..."); a quorum queue of 4.3 and later cancels the consumer instead (a
    /// `basic.cancel` without a reason: see [`CONSUMER_TIMEOUT_CANCEL`]).
    pub fn consumer_timeout(&self) -> Option<String> {
        match self {
            Error::ConsumerTimeout(_) => return Some(CONSUMER_TIMEOUT_CANCEL.to_string()),
            Error::ConsumerStopped(_) => return None,
            _ => {}
        }
        self.link_error()
            .and_then(LinkError::broker_code)
            .filter(|(code, text)| *code == 406 && text.contains("acknowledgement"))
            .map(|(code, text)| format!("{code} {}", rpc_client::wire::printable(text)))
    }

    /// Whether the broker closed the channel (not the whole connection): something this server
    /// did on it, such as a reply over `max_message_size` or a request held past
    /// `consumer_timeout`.
    pub fn channel_closed(&self) -> bool {
        matches!(
            self.link_error(),
            Some(LinkError::Amqp(AmqpError::ChannelClosed { .. }))
        )
    }

    /// The AMQP layer's error inside this one, if any.
    fn link_error(&self) -> Option<&LinkError> {
        match self {
            Error::Connection(err) => Some(err),
            Error::Broker { source, .. } => Some(source),
            _ => None,
        }
    }

    /// This error, saying what the server was doing (connection and broker errors only).
    pub fn context(self, doing: impl Into<String>) -> Error {
        match self {
            Error::Connection(source) => Error::Broker {
                doing: doing.into(),
                source: Box::new(source),
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(why) => f.write_str(why),
            Error::Connection(err) => err.fmt(f),
            Error::Broker { doing, source } => write!(f, "{doing}: {source}"),
            Error::ConsumerStopped(why) => write!(f, "consumer stopped: {why}"),
            Error::ConsumerTimeout(details) => {
                write!(f, "consumer stopped: {CONSUMER_TIMEOUT_CANCEL} {details}")
            }
            Error::Refused { hint, cause } => {
                write!(f, "{cause}; not retrying: {hint}")
            }
            Error::UncleanStop(why) => write!(
                f,
                "stopped without a clean close ({why}); unacked requests go back to the queue"
            ),
        }
    }
}

/// The source's text is part of the message, so it is not repeated as a `source()`.
impl std::error::Error for Error {}

impl From<LinkError> for Error {
    /// No broker to connect to is a configuration error; the rest are [`Error::Connection`].
    fn from(err: LinkError) -> Self {
        match err {
            LinkError::NoBroker => Error::Config(err.to_string()),
            other => Error::Connection(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{exit_code, Error};
    use rpc_client::amqp::{ConnectFailure, LinkError};
    use rpc_client::exit_code::markdown;
    use rpc_client::AmqpError;

    fn channel_closed(code: u16, message: &str) -> LinkError {
        LinkError::Amqp(AmqpError::ChannelClosed {
            channel: 1,
            code,
            message: message.into(),
        })
    }

    /// What the server decides from the AMQP layer's errors: refusals (not retried), consumer
    /// timeouts, closed channels; and their messages.
    #[test]
    fn link_errors_are_read_for_refusals_and_consumer_timeouts() {
        let login = Error::from(LinkError::Connect {
            uri: "amqp://guest:****@h:5672/%2F".into(),
            failure: Box::new(ConnectFailure::LoginRefused("guest".into())),
        });
        assert_eq!(
            login.refusal().as_deref(),
            Some("check the user name, password and virtual host")
        );
        assert!(!login.channel_closed());

        let denied = Error::from(channel_closed(403, "ACCESS_REFUSED - no access"))
            .context("cannot set the prefetch");
        assert!(denied
            .refusal()
            .is_some_and(|hint| hint.starts_with("access refused")));
        assert!(denied.channel_closed() && denied.consumer_timeout().is_none());
        assert_eq!(
            denied.to_string(),
            "cannot set the prefetch: AMQP error: server closed channel 1 (code=403, \
             message=ACCESS_REFUSED - no access)"
        );

        let transient = Error::from(LinkError::Amqp(AmqpError::ConnectionClosed {
            code: 541,
            message: "INTERNAL_ERROR - feature transient_nonexcl_queues is deprecated".into(),
        }));
        assert!(transient
            .refusal()
            .is_some_and(|hint| hint.contains("run without --transient")));
        assert!(!transient.channel_closed());

        let acks = "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out\r\n";
        let timeout = Error::broker("cannot ack")(channel_closed(406, acks));
        assert_eq!(
            timeout.consumer_timeout().as_deref(),
            Some("406 PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out??")
        );
        assert!(timeout.channel_closed() && timeout.refusal().is_none());

        let lost = Error::from(LinkError::Lost(
            "underlying socket closed unexpectedly".into(),
        ));
        assert!(lost.refusal().is_none() && !lost.channel_closed());
        assert!(matches!(
            Error::from(LinkError::NoBroker),
            Error::Config(why) if why == "no broker to connect to"
        ));
    }

    #[test]
    fn readme_lists_the_exit_codes() {
        let readme = include_str!("../README.md");
        let table = markdown(exit_code::TABLE);
        assert!(
            readme.contains(&table),
            "rpc-server/README.md must hold this table, as written:\n{table}"
        );
    }
}
