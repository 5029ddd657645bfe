//! Why a server stopped with an error ([`Error`]), and the exit codes of `rpc-server`
//! ([`exit_code`]).

use std::fmt;

/// Process exit codes of `rpc-server`, defined once: `--help` prints [`exit_code::TABLE`] and a
/// test checks that the README's table says the same.
pub mod exit_code {
    /// The server gave up (see [`crate::Error`]).
    pub const FAILURE: u8 = 1;
    /// Bad command-line arguments (clap's own usage errors use 2 as well).
    pub const USAGE: u8 = 2;
    /// Stopped on a signal, but the broker prevented the clean close.
    pub const UNCLEAN_STOP: u8 = 3;
    /// A second SIGINT/SIGTERM ended the server without its clean stop.
    pub const FORCED: u8 = 130;

    /// Every exit code of `rpc-server` with its meaning (Markdown), as the README lists them.
    pub const TABLE: &[(u8, &str)] = &[
        (0, "stopped cleanly after SIGINT or SIGTERM"),
        (
            FAILURE,
            "gave up: `--max-retries` connection attempts failed in a row, or the signal handler could not be installed",
        ),
        (
            USAGE,
            "bad arguments (a malformed `--uri`, an unreadable `--tls-ca`, a queue name over 255 bytes, …)",
        ),
        (
            UNCLEAN_STOP,
            "stopped after SIGINT or SIGTERM, but the broker prevented a clean close (within the stop bound; unacked requests go back to the queue)",
        ),
        (FORCED, "a second SIGINT or SIGTERM ended it at once"),
    ];
}

/// Why [`crate::run`] returned an error.
#[derive(Debug)]
pub enum Error {
    /// The options are unusable.
    Config(String),
    /// Connecting failed, or the connection was lost (from the client library, which opens
    /// connections for both binaries).
    Connection(rpc_client::Error),
    /// A broker operation failed: what we were doing, and why.
    Broker {
        /// What the server was doing, e.g. "cannot set the prefetch".
        doing: String,
        /// Why (boxed: it is large, and errors are rare).
        source: Box<rpc_client::Error>,
    },
    /// The request consumer stopped: cancelled by the broker, or its channel went away.
    ConsumerStopped(String),
    /// A stop was asked for (SIGINT/SIGTERM, or the shutdown channel) and the server stopped,
    /// but the broker prevented a clean close: unacked requests go back to the queue.
    UncleanStop(Box<Error>),
}

impl Error {
    /// A [`Error::Broker`] for `doing`, for `map_err` on amiquip's errors.
    pub fn broker(doing: impl Into<String>) -> impl FnOnce(amiquip::Error) -> Error {
        let doing = doing.into();
        move |source| Error::Broker {
            doing,
            source: Box::new(source.into()),
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
            Error::UncleanStop(why) => write!(
                f,
                "stopped without a clean close ({why}); unacked requests go back to the queue"
            ),
        }
    }
}

/// The source's text is part of the message, so it is not repeated as a `source()`.
impl std::error::Error for Error {}

impl From<rpc_client::Error> for Error {
    fn from(err: rpc_client::Error) -> Self {
        match err {
            rpc_client::Error::Config(why) => Error::Config(why),
            other => Error::Connection(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exit_code;
    use rpc_client::error::exit_code::markdown;

    #[test]
    fn readme_lists_the_exit_codes() {
        let readme = include_str!("../../README.md");
        let table = markdown(exit_code::TABLE);
        assert!(
            readme.contains(&table),
            "README.md must hold this table, as written:\n{table}"
        );
    }
}
