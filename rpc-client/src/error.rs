//! The ways a call can fail ([`Error`]), and the exit code the `rpc-client` binary gives each
//! ([`exit_code`]).
//!
//! Library users match on [`Error`]; the binary maps it to a process exit code with
//! [`Error::exit_code`] so scripts can tell "no broker" from "no answer" from "bad request".

use crate::amqp::{each_broker, AmqpError, LinkError};
use std::fmt;
use std::time::Duration;

/// Process exit codes of `rpc-client`, defined once: `--help` prints [`exit_code::TABLE`] and a
/// test checks that the table in `rpc-client/README.md` says the same.
pub mod exit_code {
    /// Anything not covered below, e.g. a reply that is not a number.
    pub const OTHER: u8 = 1;
    /// Bad command-line arguments (clap's own usage errors use 2 as well).
    pub const USAGE: u8 = 2;
    /// The broker could not be reached, refused the login, or the connection was lost.
    pub const CONNECTION: u8 = 3;
    /// No reply arrived within `--timeout`.
    pub const TIMEOUT: u8 = 4;
    /// The server answered with an error reply (for example n above its `--max-n`).
    pub const SERVER_ERROR: u8 = 5;
    /// The request could not be routed: no queue of that name exists (no server has declared
    /// it).
    pub const NO_ROUTE: u8 = 6;

    /// Every exit code of `rpc-client` with its meaning (Markdown), as `rpc-client/README.md` lists them.
    pub const TABLE: &[(u8, &str)] = &[
        (0, "every call answered"),
        (OTHER, "other error, e.g. a reply that is not a number, or not fib(N)"),
        (USAGE, "bad arguments (`-1`, `abc`, a malformed `--uri`, …)"),
        (CONNECTION, "broker unreachable, login refused, or connection lost"),
        (
            TIMEOUT,
            "no reply within `--timeout` (the message says whether the queue has a consumer)",
        ),
        (
            SERVER_ERROR,
            "the server answered with an error reply (e.g. n above its `--max-n`)",
        ),
        (
            NO_ROUTE,
            "no request queue of that name: the request was returned unroutable (no server has declared it: none runs, or one cannot declare it)",
        ),
    ];

    /// `table` as the "Exit codes:" section of `--help`.
    pub fn help(table: &[(u8, &str)]) -> String {
        let mut text = String::from("Exit codes:");
        for (code, meaning) in table {
            text.push_str(&format!("\n  {code:>3}  {}", meaning.replace('`', "")));
        }
        text
    }

    /// `table` as the crate READMEs' Markdown table.
    pub fn markdown(table: &[(u8, &str)]) -> String {
        let mut text = String::from("| code | meaning |\n|---:|---|");
        for (code, meaning) in table {
            text.push_str(&format!("\n| {code} | {meaning} |"));
        }
        text
    }
}

/// Why connecting or calling failed.
#[derive(Debug)]
pub enum Error {
    /// The TCP connection, the AMQP handshake or the login failed. `uri` is already masked.
    Connect {
        /// Masked URI of the broker that was tried.
        uri: String,
        /// What went wrong, one line.
        reason: String,
        /// The broker refused the login or the virtual host: trying again with the same
        /// settings cannot succeed.
        refused: bool,
    },
    /// The connection or channel was closed while it was in use.
    ConnectionLost(String),
    /// The connection was lost after the request was sent, and the call is not idempotent
    /// ([`crate::ClientOptions::idempotent`]), so it was not sent again: the request may or
    /// may not have run.
    MaybeRan {
        /// The call, as messages name it.
        call: String,
        /// Why the connection was lost.
        cause: String,
        /// The broker had confirmed the request (it reached the queue).
        confirmed: bool,
    },
    /// The broker did not answer a round trip in time, so the connection was abandoned (its
    /// socket shut down); says what was waited for.
    Stalled(String),
    /// The broker blocks this connection's publishers (a resource alarm: memory or disk);
    /// holds the broker's reason.
    Blocked(String),
    /// No reply with our correlation id arrived in time.
    Timeout {
        /// The call, as messages name it: `fib(30)`, `request 2 (5 bytes)`.
        call: String,
        /// How long the call waited.
        waited: Duration,
        /// The request queue.
        queue: String,
        /// Consumers of the request queue when the call gave up, if that could be checked.
        consumers: Option<u32>,
    },
    /// The broker returned the request (it was published `mandatory`): nothing is bound to
    /// the request queue's name, i.e. the queue does not exist.
    NoRoute {
        /// The request queue.
        queue: String,
        /// The broker's reason, e.g. `NO_ROUTE`.
        reason: String,
    },
    /// The server answered with an error reply (header `x-rpc-error`).
    Server {
        /// Machine-readable code from the `x-rpc-error` header, e.g. `bad-request`.
        code: String,
        /// Human-readable message from the reply body.
        message: String,
    },
    /// A reply arrived with our correlation id but is not a valid result.
    BadReply(String),
    /// A close by the broker (its reply code and text), or another failure the AMQP library
    /// reported (its words).
    Amqp(AmqpError),
    /// The options are unusable (e.g. a malformed URI).
    Config(String),
}

impl Error {
    /// The `rpc-client` exit code for this error (see [`exit_code`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Connect { .. }
            | Error::ConnectionLost(_)
            | Error::MaybeRan { .. }
            | Error::Stalled(_)
            | Error::Blocked(_) => exit_code::CONNECTION,
            Error::Timeout { .. } => exit_code::TIMEOUT,
            Error::NoRoute { .. } => exit_code::NO_ROUTE,
            Error::Server { .. } => exit_code::SERVER_ERROR,
            Error::BadReply(_) => exit_code::OTHER,
            Error::Config(_) => exit_code::USAGE,
            Error::Amqp(err) if err.is_connection_loss() => exit_code::CONNECTION,
            Error::Amqp(_) => exit_code::OTHER,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { uri, reason, .. } => write!(f, "cannot connect to {uri}: {reason}"),
            Error::ConnectionLost(why) => write!(f, "connection to the broker lost: {why}"),
            Error::MaybeRan {
                call,
                cause,
                confirmed,
            } => write!(
                f,
                "connection to the broker lost ({cause}) after {call} was sent{}: it may or may \
                 not have run, so it was not sent again (--idempotent sends it again, if running \
                 it twice is safe)",
                if *confirmed {
                    " and the broker had taken it"
                } else {
                    ""
                }
            ),
            Error::Stalled(why) => write!(
                f,
                "connection to the broker lost: {why}; the connection was abandoned"
            ),
            Error::Blocked(reason) => write!(
                f,
                "the broker is blocking publishers: resource alarm (memory or disk); \
                 broker's reason: {reason}"
            ),
            Error::Timeout {
                call,
                waited,
                queue,
                consumers,
            } => {
                write!(f, "no reply for {call} within {:.1}s", waited.as_secs_f64())?;
                let queue = crate::text::printable(queue);
                match consumers {
                    Some(0) => write!(
                        f,
                        ": queue '{queue}' has no consumer: is an rpc-server running?"
                    ),
                    Some(c) => write!(
                        f,
                        ": queue '{queue}' has {c} consumer(s), busy or slow: \
                         try a longer --timeout or more servers"
                    ),
                    None => write!(f, ": is an rpc-server running on queue '{queue}'?"),
                }
            }
            Error::NoRoute { queue, reason } => write!(
                f,
                "no queue '{}' exists (the broker returned the request: {reason}), so no \
                 server has declared it: none runs, or one cannot declare it (see its log)",
                crate::text::printable(queue)
            ),
            Error::Server { code, message } => write!(f, "server error ({code}): {message}"),
            Error::BadReply(why) => write!(f, "bad reply: {why}"),
            Error::Amqp(err) => write!(
                f,
                "AMQP error: {}",
                crate::text::printable(&err.to_string())
            ),
            Error::Config(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

impl From<LinkError> for Error {
    /// The link's failures as the calling layer reports them: failed connects as
    /// [`Error::Connect`], a stalled round trip as [`Error::Stalled`], a lost connection as
    /// [`Error::ConnectionLost`], closes by the broker and other AMQP failures as
    /// [`Error::Amqp`]; no broker at all is [`Error::Config`]. The messages stay the same.
    fn from(err: LinkError) -> Self {
        let refused = err.is_refusal();
        match err {
            LinkError::Connect { uri, failure } => Error::Connect {
                uri,
                refused,
                reason: failure.to_string(),
            },
            LinkError::AllBrokers(failures) => Error::Connect {
                uri: format!("any of {} brokers", failures.len()),
                refused,
                reason: each_broker(&failures),
            },
            LinkError::NoBroker => Error::Config(LinkError::NoBroker.to_string()),
            LinkError::Stalled(why) => Error::Stalled(why),
            LinkError::Lost(amqp) => {
                Error::ConnectionLost(crate::text::printable(&amqp.to_string()))
            }
            LinkError::Amqp(err) => Error::Amqp(err),
        }
    }
}

impl Error {
    /// The reply code and text with which the broker closed the channel or the connection,
    /// if that is what happened (e.g. 403 ACCESS_REFUSED, 404 NOT_FOUND, 406
    /// PRECONDITION_FAILED, 541 INTERNAL_ERROR). The text comes from the network: print it
    /// through [`crate::text::printable`].
    pub fn broker_code(&self) -> Option<(u16, &str)> {
        match self {
            Error::Amqp(err) => err.broker_code(),
            _ => None,
        }
    }
}

impl Error {
    /// Whether this means the connection is gone (lost, abandoned, or closed by the broker):
    /// what a client recovers from by connecting again.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            Error::ConnectionLost(_) | Error::Stalled(_) => true,
            Error::Amqp(err) => err.is_connection_loss(),
            _ => false,
        }
    }

    /// Whether connecting again cannot help: the broker refused the login or the vhost, or
    /// the options are unusable.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::Connect { refused: true, .. } | Error::Config(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{exit_code, Error};
    use crate::amqp::{AmqpError, ConnectFailure, LinkError};
    use std::time::Duration;

    /// The link's failures keep their message when the calling layer reports them, and exit
    /// with the code the README gives.
    #[test]
    fn link_errors_keep_their_message_and_exit_code() {
        let login = || ConnectFailure::LoginRefused("guest".into());
        let timeout = || ConnectFailure::HandshakeTimeout(Duration::from_secs(1));
        let cases = [
            (
                LinkError::Connect {
                    uri: "amqp://u".into(),
                    failure: Box::new(login()),
                },
                exit_code::CONNECTION,
                true,
                false,
            ),
            (
                LinkError::AllBrokers(vec![("a".into(), login()), ("b".into(), timeout())]),
                exit_code::CONNECTION,
                false,
                false,
            ),
            (
                LinkError::AllBrokers(vec![("a".into(), login()), ("b".into(), login())]),
                exit_code::CONNECTION,
                true,
                false,
            ),
            (LinkError::NoBroker, exit_code::USAGE, true, false),
            (
                LinkError::Stalled("no answer within 1.0s to the close".into()),
                exit_code::CONNECTION,
                false,
                true,
            ),
            (
                LinkError::Lost("I/O thread panicked".into()),
                exit_code::CONNECTION,
                false,
                true,
            ),
            (
                LinkError::Amqp(AmqpError::ConnectionClosed {
                    code: 320,
                    message: "CONNECTION_FORCED\r\n".into(),
                }),
                exit_code::CONNECTION,
                false,
                true,
            ),
            (
                LinkError::Amqp(AmqpError::ChannelClosed {
                    channel: 3,
                    code: 406,
                    message: "PRECONDITION_FAILED".into(),
                }),
                exit_code::OTHER,
                false,
                false,
            ),
            (
                LinkError::Amqp(AmqpError::Other(
                    "AMQP protocol error - received unexpected frame".into(),
                )),
                exit_code::OTHER,
                false,
                false,
            ),
        ];
        for (link, code, refusal, loss) in cases {
            let text = link.to_string();
            let codes = link.broker_code().map(|(c, t)| (c, t.to_string()));
            assert_eq!(link.is_refusal(), refusal, "{text}");
            assert_eq!(link.is_connection_loss(), loss, "{text}");
            let err = Error::from(link);
            assert_eq!(err.to_string(), text);
            assert_eq!(err.exit_code(), code, "{text}");
            assert_eq!(err.is_refusal(), refusal, "{text}");
            assert_eq!(err.is_connection_loss(), loss, "{text}");
            assert_eq!(err.broker_code().map(|(c, t)| (c, t.to_string())), codes);
        }
    }

    #[test]
    fn readme_lists_the_exit_codes() {
        let readme = include_str!("../README.md");
        let table = exit_code::markdown(exit_code::TABLE);
        assert!(
            readme.contains(&table),
            "rpc-client/README.md must hold this table, as written:\n{table}"
        );
    }

    #[test]
    fn help_lists_every_code() {
        let help = exit_code::help(exit_code::TABLE);
        for (code, _) in exit_code::TABLE {
            assert!(help.contains(&format!(" {code}  ")), "{help}");
        }
        assert!(!help.contains('`'));
    }
}
