//! Helpers for tests against a real broker (feature `test-support`; not for production use).
//!
//! Tests use their own uuid-named queues ([`unique_name`]) so they can run in parallel, delete
//! them when done ([`QueueGuard`]) and poll conditions with a deadline ([`wait_until`])
//! instead of sleeping. [`broker`] checks once per process that the test broker answers, so
//! a missing broker fails every test at once with one message instead of each after its
//! own timeouts.

use crate::amqp::{connect_first, queue_options, LinkError, QueueKind};
use crate::BrokerOptions;
use crate::Error;
use amiquip::{Channel, Connection, Publish, QueueDeleteOptions};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the one-time check of [`broker`] waits for the TCP connect and the handshake, each.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The test broker: `AMQP_URI` if set, else `amqp://guest:guest@127.0.0.1:5672`.
///
/// The first call in a process logs in to it once (a few seconds at most); if that fails,
/// this and every later call panics with one message saying how to start a broker.
pub fn broker() -> BrokerOptions {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let options = broker_options();
    if let Err(message) = CHECKED.get_or_init(|| probe(&options)) {
        panic!("{message}");
    }
    options
}

/// Logs in to `options` once, with a short limit; the failure message names `scripts/broker.sh`.
fn probe(options: &BrokerOptions) -> Result<(), String> {
    let quick = BrokerOptions {
        connect_timeout: PROBE_TIMEOUT,
        ..options.clone()
    };
    match connect_first(std::slice::from_ref(&quick), 0) {
        Ok((connection, _)) => {
            let _ = connection.close();
            Ok(())
        }
        Err(err) => {
            let reason = match err {
                LinkError::Connect { failure, .. } => failure.to_string(),
                other => other.to_string(),
            };
            let source = if std::env::var_os("AMQP_URI").is_some() {
                "AMQP_URI"
            } else {
                "the default; AMQP_URI is unset"
            };
            Err(format!(
                "no RabbitMQ broker answers at {options} ({source}): {reason}; start one with \
                 scripts/broker.sh, or point AMQP_URI at one"
            ))
        }
    }
}

/// [`broker`] without the check: `AMQP_URI` if set, else `amqp://guest:guest@127.0.0.1:5672`,
/// with a 5 s connect timeout. For tests that wait for a broker to come (back) up.
pub fn broker_options() -> BrokerOptions {
    let options = match std::env::var("AMQP_URI") {
        Ok(uri) => BrokerOptions::from_uri(&uri).unwrap_or_else(|e| panic!("AMQP_URI: {e:#}")),
        Err(_) => BrokerOptions {
            host: "127.0.0.1".into(),
            ..BrokerOptions::default()
        },
    };
    BrokerOptions {
        connect_timeout: Duration::from_secs(5),
        ..options
    }
}

/// `prefix-<uuid>`: a queue name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// Why a wait of this module ended without its condition.
#[derive(Debug)]
pub enum WaitError {
    /// The condition could not be checked: what was waited for, and why.
    Failed {
        /// What was waited for.
        what: String,
        /// The error checking the condition.
        source: Box<Error>,
    },
    /// The time was up: what was waited for, for how long, and what was seen last, if known.
    TimedOut {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// What was seen last, e.g. `0 consumer(s)`.
        last: Option<String>,
    },
    /// The caller's `give_up` stopped the wait early (a server being waited for exited, say).
    GaveUp {
        /// What was waited for.
        what: String,
        /// Why the wait stopped.
        why: String,
    },
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Failed { what, source } => write!(f, "while waiting for {what}: {source}"),
            WaitError::TimedOut { what, waited, last } => {
                write!(f, "timed out after {waited:?} waiting for {what}")?;
                match last {
                    Some(last) => write!(f, " (last seen: {last})"),
                    None => Ok(()),
                }
            }
            WaitError::GaveUp { what, why } => write!(f, "{why} while waiting for {what}"),
        }
    }
}

impl std::error::Error for WaitError {}

/// Polls `condition` every 20 ms until it holds; fails with `what` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    condition: impl FnMut() -> Result<bool, Error>,
) -> Result<(), WaitError> {
    poll_until(what, timeout, Duration::from_millis(20), condition)
}

/// Polls `condition` every `every` until it holds; fails with `what` after `timeout`.
pub fn poll_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut condition: impl FnMut() -> Result<bool, Error>,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        match condition() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(source) => {
                return Err(WaitError::Failed {
                    what: what.to_string(),
                    source: Box::new(source),
                })
            }
        }
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut {
                what: what.to_string(),
                waited: timeout,
                last: None,
            });
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Connects and logs in to the broker described by `options`, without bounds on later calls.
pub fn connect(options: &BrokerOptions) -> Result<Connection, Error> {
    let (connection, _) = connect_first(std::slice::from_ref(options), 0)?;
    Ok(connection)
}

/// Installs a stderr logger for tests (captured per test): our crates and dependencies at warn
/// and above unless `RUST_LOG` says otherwise. A second call is harmless.
pub fn init_logging() {
    let mut builder = env_logger::Builder::new();
    builder
        .is_test(true)
        .filter_level(log::LevelFilter::Warn)
        // amiquip warns about channel closes tests provoke on purpose (a 404 on a passive
        // declare).
        .filter_module(crate::amqp::LIBRARY_LOG, log::LevelFilter::Error);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    crate::amqp::hide_passwords(&mut builder);
    let _ = builder.try_init();
}

/// Waits up to `within` until `queue` has exactly `consumers` consumers, asking the first of
/// `brokers` that answers; a connection that fails is replaced by a new one (the brokers may
/// be restarting). Returns how long it waited; the error says what it saw last.
pub fn wait_for_consumers(
    brokers: &[BrokerOptions],
    queue: &str,
    consumers: u32,
    within: Duration,
) -> Result<Duration, WaitError> {
    wait_for_consumer_count(
        brokers,
        queue,
        Consumers::Exactly(consumers),
        within,
        || None,
    )
}

/// The consumer count [`wait_for_consumer_count`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumers {
    /// Exactly this many (0: every consumer gone).
    Exactly(u32),
    /// This many or more.
    AtLeast(u32),
}

impl Consumers {
    fn reached(self, count: u32) -> bool {
        match self {
            Consumers::Exactly(want) => count == want,
            Consumers::AtLeast(want) => count >= want,
        }
    }
}

impl std::fmt::Display for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consumers::Exactly(n) => write!(f, "{n} consumer(s)"),
            Consumers::AtLeast(n) => write!(f, ">= {n} consumer(s)"),
        }
    }
}

/// [`wait_for_consumers`] for any [`Consumers`] count, giving up early when `give_up` (asked
/// before each poll) returns why: a server being waited for has exited, say.
pub fn wait_for_consumer_count(
    brokers: &[BrokerOptions],
    queue: &str,
    want: Consumers,
    within: Duration,
    mut give_up: impl FnMut() -> Option<String>,
) -> Result<Duration, WaitError> {
    let started = Instant::now();
    let what = format!("{want} on '{queue}'");
    let mut admin: Option<Admin> = None;
    let mut last = String::from("nothing yet");
    let mut gave_up = None;
    wait_until(&what, within, || {
        if let Some(why) = give_up() {
            gave_up = Some(why);
            return Ok(true);
        }
        let a = match admin.as_mut() {
            Some(a) => a,
            None => match Admin::connect_to(brokers) {
                Ok(a) => admin.insert(a),
                Err(err) => {
                    last = format!("cannot connect: {err}");
                    return Ok(false);
                }
            },
        };
        match a.queue_state(queue) {
            Ok(Some((_, count))) if want.reached(count) => return Ok(true),
            Ok(Some((_, count))) => last = format!("{count} consumer(s)"),
            Ok(None) => last = "no such queue".into(),
            Err(err) => {
                last = format!("error: {err}");
                admin = None; // a new connection next time
            }
        }
        Ok(false)
    })
    .map_err(|err| match err {
        WaitError::TimedOut { what, waited, .. } => WaitError::TimedOut {
            what,
            waited,
            last: Some(last),
        },
        other => other,
    })?;
    match gave_up {
        Some(why) => Err(WaitError::GaveUp { what, why }),
        None => Ok(started.elapsed()),
    }
}

/// A plain connection for arranging and inspecting broker state in tests.
pub struct Admin {
    // Field order is drop order: the channel closes before its connection.
    channel: Channel,
    connection: Connection,
    /// The brokers it was connected through, for [`Admin::wait_for_consumers`].
    brokers: Vec<BrokerOptions>,
}

impl Admin {
    /// Connects to [`broker`].
    pub fn connect() -> Result<Admin, Error> {
        Admin::connect_to(&[broker()])
    }

    /// Connects to the first of `brokers` that answers (the nodes of a cluster).
    pub fn connect_to(brokers: &[BrokerOptions]) -> Result<Admin, Error> {
        let (mut connection, _) = connect_first(brokers, 0)?;
        let channel = connection.open_channel(None)?;
        Ok(Admin {
            channel,
            connection,
            brokers: brokers.to_vec(),
        })
    }

    /// The admin channel, for publishing and consuming directly.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares `queue` durable: classic (rpc-server's default), or quorum.
    pub fn declare(&self, queue: &str, quorum: bool) -> Result<(), Error> {
        let kind = QueueKind {
            durable: true,
            quorum,
        };
        self.channel.queue_declare(queue, queue_options(kind))?;
        Ok(())
    }

    /// `(messages ready, consumers)` of `queue`, or `None` if it does not exist.
    pub fn queue_state(&mut self, queue: &str) -> Result<Option<(u32, u32)>, Error> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let probe = self.connection.open_channel(None)?;
        match probe.queue_declare_passive(queue) {
            Ok(q) => Ok(Some((
                q.declared_message_count().unwrap_or(0),
                q.declared_consumer_count().unwrap_or(0),
            ))),
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Waits up to 20 s until `queue` has exactly `consumers` consumers (see the function
    /// [`wait_for_consumers`], which this calls with the brokers this admin connected through).
    pub fn wait_for_consumers(&mut self, queue: &str, consumers: u32) -> Result<(), WaitError> {
        wait_for_consumers(&self.brokers, queue, consumers, Duration::from_secs(20)).map(|_| ())
    }

    /// Waits until `queue` holds no ready messages.
    pub fn wait_for_empty(&mut self, queue: &str) -> Result<(), WaitError> {
        wait_until(
            &format!("queue '{queue}' to be empty"),
            Duration::from_secs(20),
            || Ok(self.queue_state(queue)?.map(|(m, _)| m) == Some(0)),
        )
    }

    /// Publishes `body` to `routing_key` on the default exchange.
    pub fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: impl Into<crate::Properties>,
    ) -> Result<(), Error> {
        let properties = properties.into().into_amqp();
        self.channel
            .basic_publish("", Publish::with_properties(body, routing_key, properties))?;
        Ok(())
    }

    /// Deletes `queue` (whatever it holds); a missing queue is fine.
    pub fn delete(&mut self, queue: &str) -> Result<(), Error> {
        let channel = self.connection.open_channel(None)?;
        channel.queue_delete(queue, QueueDeleteOptions::default())?;
        Ok(())
    }
}

/// Deletes its queue when dropped, so a failing test still cleans up.
pub struct QueueGuard {
    name: String,
    brokers: Vec<BrokerOptions>,
}

impl QueueGuard {
    /// A fresh [`unique_name`] queue name on [`broker`], deleted on drop.
    pub fn new(prefix: &str) -> QueueGuard {
        QueueGuard::on(vec![broker()], prefix)
    }

    /// A fresh [`unique_name`] queue name, deleted through the first of `brokers` that answers.
    pub fn on(brokers: Vec<BrokerOptions>, prefix: &str) -> QueueGuard {
        QueueGuard {
            name: unique_name(prefix),
            brokers,
        }
    }

    /// The queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the queue now, reporting failure; nothing is left for drop.
    pub fn delete(&mut self) -> Result<(), Error> {
        Admin::connect_to(&self.brokers)?.delete(&self.name)?;
        self.brokers.clear();
        Ok(())
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if !self.brokers.is_empty() {
            if let Err(err) = self.delete() {
                eprintln!("cannot delete test queue '{}': {err}", self.name);
            }
        }
    }
}
