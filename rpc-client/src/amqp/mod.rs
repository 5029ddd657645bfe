//! Reaching the broker, shared by both binaries: broker options and `amqp://` URIs
//! ([`BrokerOptions`], [`mask_uri`]), opening a connection with `TCP_NODELAY` and one time
//! limit for TCP, TLS and the handshake together (`open_first`, `Link`), every byte from
//! the broker read through `DepthGuard` (headers nested too deep cut before the AMQP library
//! decodes them, [`flatten_deep_headers`]), time limits on each later round trip (`Watchdog`),
//! consuming a queue (`consume`, `callback_queue`) and the backoff between connection attempts ([`Reconnect`]). Its failures are
//! [`LinkError`]s.
//!
//! Nothing here knows about calls or replies: the calling layer ([`crate::RpcClient`]) and
//! `rpc-server` are built on it.
//!
//! The documented items here use only our own types. The items that hand over the AMQP
//! library's own (its connection and channel, its consumer messages, its errors) are hidden
//! from the documentation: `Link`, `open_first`, `connect_first`, `consume`,
//! `callback_queue`, `Queues` (with `QueueKind`, `QueueState` and `queue_options`), `DepthGuard`
//! and `Watchdog` are for `rpc-server`, with no stability
//! promise (see "The AMQP seam" in `rpc-client/README.md`).

mod connection;
mod consume;
mod depth;
mod error;
mod random;
mod reconnect;
mod tls;
mod uri;
mod watchdog;

#[doc(hidden)]
pub use connection::{connect_first, open_first, Link};
#[doc(hidden)]
pub use consume::{callback_queue, consume, queue_options, QueueKind, QueueState, Queues};
#[doc(hidden)]
pub use depth::DepthGuard;
pub use depth::{flatten_deep_headers, FLATTENED_DEPTH, MAX_HEADER_DEPTH};
pub use error::{AmqpError, ConnectFailure, LinkError};
pub use reconnect::Reconnect;
pub use tls::TlsError;
pub use uri::{mask_uri, BrokerOptions, UriError, UriProblem};
#[doc(hidden)]
pub use watchdog::Watchdog;

pub(crate) use error::each_broker;
pub(crate) use random::random_u64;
// For the command line's broker flags.
#[cfg(any(feature = "cli", feature = "test-support"))]
pub(crate) use connection::LIBRARY_LOG;
#[cfg(feature = "cli")]
pub(crate) use {
    random::shuffle,
    tls::load_ca,
    uri::{has_password, DEFAULT_PORT, DEFAULT_TLS_PORT},
};

/// Keeps passwords out of a log: the AMQP library logs the SASL response, password included,
/// at debug level in its handshake module, which stays at info whatever else `builder` lets
/// through.
/// Call it after any filter a user chose (`RUST_LOG`).
#[cfg(any(feature = "cli", feature = "test-support"))]
pub(crate) fn hide_passwords(builder: &mut env_logger::Builder) {
    builder.filter_module(connection::HANDSHAKE_LOG, log::LevelFilter::Info);
}
