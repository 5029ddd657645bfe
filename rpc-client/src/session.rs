//! One connection's worth of calling ([`Session`]): the link to one broker, a channel with
//! publisher confirms, the callback queue, and the requests the broker has not confirmed yet.
//!
//! [`crate::RpcClient`] opens a session, calls over it, and when the connection is lost
//! drops it and opens another one (on the next broker). A session knows nothing of calls
//! beyond their correlation ids; which call may be re-sent is the client's business.
//!
//! Confirms are read lazily. A reply proves that its request reached the queue, so on the hot
//! path the confirms that pile up in amiquip's channel are only drained, without waking the
//! caller's thread for each of them; the session waits on them only for a request that has
//! been neither answered nor confirmed for [`CONFIRM_WAIT`], which is when a nack (the broker
//! refusing a request) could be what keeps its caller waiting.

use crate::amqp::BrokerOptions;
use crate::amqp::{open_first, Link, LinkError};
use crate::error::Error;
use crate::properties::Properties;
use crate::request::{RpcRequest, CLOSE_LIMIT, DIRECT_REPLY_TO, PROBE_LIMIT};
use crate::trace::TraceContext;
use crate::{amqp, wire, ReplyQueue};
use amiquip::{
    Channel, Confirm, ConnectionBlockedNotification, ConsumerMessage, ConsumerOptions, Publish,
    Return,
};
use crossbeam_channel::{select, Receiver};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a request may go unanswered and unconfirmed before the session listens for its
/// confirm (and so hears at once of a nack).
pub(crate) const CONFIRM_WAIT: Duration = Duration::from_millis(50);

/// How long a request may go unanswered and unconfirmed before the session reports it
/// ([`Event::Unconfirmed`]): the broker may have dropped it without a nack (seen when a quorum
/// queue's leader is killed), or be slow to take it.
pub(crate) const CONFIRM_PATIENCE: Duration = Duration::from_secs(2);

/// A message on the callback queue, in our own types (moved out of the AMQP library's).
pub(crate) struct Incoming {
    /// Its body.
    pub(crate) body: Vec<u8>,
    /// Its properties.
    pub(crate) properties: Properties,
}

/// A request the broker returned, in our own types.
pub(crate) struct Returned {
    /// The broker's reason, e.g. `NO_ROUTE` (not made printable).
    pub(crate) reply_text: String,
    /// The request's properties.
    pub(crate) properties: Properties,
}

/// What the broker sent us next.
pub(crate) enum Event {
    /// A message on the callback queue.
    Delivered(Incoming),
    /// A request the broker returned (published `mandatory`, no queue to route it to).
    Returned(Returned),
    /// The correlation ids of requests the broker refused (nacked): they never reached the
    /// queue.
    Nacked(Vec<String>),
    /// The correlation ids of requests neither answered nor confirmed for
    /// [`CONFIRM_PATIENCE`]: dropped, or merely slow; each is reported once.
    Unconfirmed(Vec<String>),
    /// The deadline passed.
    TimedOut,
}

/// An open connection to one broker, set up for calls.
pub(crate) struct Session {
    // Field order is drop order: the channel closes before its connection, the receivers
    // outlive both (amiquip's I/O thread must never find them gone), and the link's watchdog
    // bounds the closes (see `Drop`).
    channel: Channel,
    link: Option<Link>,
    replies: Receiver<ConsumerMessage>,
    returns: Receiver<Return>,
    blocked: Receiver<ConnectionBlockedNotification>,
    confirms: Receiver<Confirm>,
    /// The broker's reason while it blocks our publishers (a resource alarm).
    blocked_by: Option<String>,
    reply_queue: String,
    /// Which of the client's brokers this is.
    broker: usize,
    /// The publish sequence number of the channel's next publish (the first is 1).
    next_seq: u64,
    /// Requests published and neither confirmed nor answered: sequence number → correlation
    /// id and when it was published.
    unconfirmed: BTreeMap<u64, (String, Instant)>,
    /// Requests reported as [`Event::Unconfirmed`] and not confirmed since.
    overdue: BTreeSet<u64>,
}

/// The bound on each set-up round trip: `limit`, and no later than `deadline`.
#[derive(Clone, Copy)]
struct Bound {
    limit: Duration,
    deadline: Option<Instant>,
}

impl Bound {
    /// How long the next round trip may take.
    fn next(self) -> Duration {
        match self.deadline {
            Some(deadline) => self
                .limit
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1)),
            None => self.limit,
        }
    }
}

impl Session {
    /// Connects to the first broker of `brokers` that answers, starting at `start`, and sets
    /// up the channel (with publisher confirms) and the callback queue, each round trip bounded
    /// by `limit`, and all of them by `deadline` if there is one.
    pub(crate) fn open(
        brokers: &[BrokerOptions],
        start: usize,
        reply_queue: ReplyQueue,
        limit: Duration,
        deadline: Option<Instant>,
    ) -> Result<Session, Error> {
        let bound = Bound { limit, deadline };
        let mut start = start;
        // A broker that accepts the connection and then loses it during the set-up (a node
        // shutting down closes it with CONNECTION_FORCED) is passed over for the next one.
        let mut attempts = brokers.len();
        loop {
            let (mut link, broker) = open_first(brokers, start)?;
            let err = match Self::set_up(&mut link, reply_queue, bound) {
                Ok(parts) => {
                    let (channel, reply_queue, replies, returns, blocked, confirms) = parts;
                    log::debug!("callback queue {reply_queue}");
                    return Ok(Session {
                        channel,
                        link: Some(link),
                        replies,
                        returns,
                        blocked,
                        confirms,
                        blocked_by: None,
                        reply_queue,
                        broker,
                        next_seq: 1,
                        unconfirmed: BTreeMap::new(),
                        overdue: BTreeSet::new(),
                    });
                }
                Err(err) => err,
            };
            link.bound_close(CLOSE_LIMIT);
            attempts -= 1;
            let expired = deadline.is_some_and(|deadline| Instant::now() >= deadline);
            if attempts == 0 || expired || !err.is_connection_loss() {
                return Err(err);
            }
            log::warn!(
                "{}: the connection was lost while setting it up ({err}); trying the next broker",
                brokers[broker]
            );
            start = broker + 1;
        }
    }

    /// Opens the channel, the callback queue and the listeners, each round trip bounded.
    #[allow(clippy::type_complexity)]
    fn set_up(
        link: &mut Link,
        reply_queue: ReplyQueue,
        bound: Bound,
    ) -> Result<
        (
            Channel,
            String,
            Receiver<ConsumerMessage>,
            Receiver<Return>,
            Receiver<ConnectionBlockedNotification>,
            Receiver<Confirm>,
        ),
        Error,
    > {
        let Link {
            connection,
            watchdog,
        } = link;
        let blocked =
            watchdog.bounded("to the blocked-notification listener", bound.next(), || {
                connection.listen_for_connection_blocked()
            })?;
        let channel = watchdog.bounded("to the channel open", bound.next(), || {
            connection.open_channel(None)
        })?;
        let (reply_queue, replies) = match reply_queue {
            ReplyQueue::Exclusive => watchdog.bounded(
                "to the callback queue's declare and consume",
                bound.next(),
                || amqp::callback_queue(&channel),
            )?,
            // Direct reply-to requires no-ack consuming on the channel that publishes.
            ReplyQueue::Direct => (
                DIRECT_REPLY_TO.to_string(),
                watchdog.bounded("to the direct reply-to consume", bound.next(), || {
                    amqp::consume(
                        &channel,
                        DIRECT_REPLY_TO,
                        ConsumerOptions {
                            no_ack: true,
                            ..ConsumerOptions::default()
                        },
                    )
                })?,
            ),
        };
        // Requests are published mandatory: the broker returns them at once when no queue of
        // that name exists, instead of dropping them while we wait out the timeout.
        let returns = watchdog.bounded("to the return listener", bound.next(), || {
            channel.listen_for_returns()
        })?;
        let confirms = watchdog.bounded("to enabling publisher confirms", bound.next(), || {
            let confirms = channel.listen_for_publisher_confirms()?;
            channel.enable_publisher_confirms()?;
            Ok::<_, amiquip::Error>(confirms)
        })?;
        Ok((channel, reply_queue, replies, returns, blocked, confirms))
    }

    /// The callback queue (the `reply_to` of this session's requests).
    pub(crate) fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Which of the client's brokers this session is connected to.
    pub(crate) fn broker(&self) -> usize {
        self.broker
    }

    /// Publishes `request` to `queue` as the call `correlation_id`, span `trace` (if traced), whose caller waits
    /// `remaining` more (its `expiration`); returns its publish sequence number. Fails at once
    /// while the broker blocks our publishers; the publish itself waits at most `remaining`.
    pub(crate) fn publish(
        &mut self,
        queue: &str,
        request: &RpcRequest,
        trace: Option<&TraceContext>,
        correlation_id: &str,
        remaining: Duration,
    ) -> Result<u64, Error> {
        self.check_blocked()?;
        let properties = request.properties(
            wire::request_properties_with_deadline(&self.reply_queue, correlation_id, remaining),
            trace,
        );
        let mut publish = Publish::with_properties(&request.body, queue, properties.into_amqp());
        publish.mandatory = true;
        let channel = &self.channel;
        self.link()?
            .watchdog
            .bounded("to the request's publish", remaining, || {
                channel.basic_publish("", publish)
            })?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unconfirmed
            .insert(seq, (correlation_id.to_string(), Instant::now()));
        Ok(seq)
    }

    /// The request published as `seq` was answered: its confirm no longer matters.
    pub(crate) fn answered(&mut self, seq: u64) {
        self.unconfirmed.remove(&seq);
        self.overdue.remove(&seq);
    }

    /// Whether the broker confirmed the request published as `seq`, by the confirms taken in
    /// so far ([`Session::take_confirms`]).
    pub(crate) fn confirmed(&self, seq: u64) -> bool {
        seq < self.next_seq && !self.unconfirmed.contains_key(&seq) && !self.overdue.contains(&seq)
    }

    /// Takes in the confirms that arrived; returns the correlation ids of nacked requests.
    pub(crate) fn take_confirms(&mut self) -> Vec<String> {
        let mut nacked = Vec::new();
        while let Ok(confirm) = self.confirms.try_recv() {
            self.settle(confirm, &mut nacked);
        }
        nacked
    }

    fn settle(&mut self, confirm: Confirm, nacked: &mut Vec<String>) {
        let (payload, accepted) = match confirm {
            Confirm::Ack(payload) => (payload, true),
            Confirm::Nack(payload) => (payload, false),
        };
        if payload.multiple {
            self.overdue = self.overdue.split_off(&(payload.delivery_tag + 1));
        } else {
            self.overdue.remove(&payload.delivery_tag);
        }
        let settled: Vec<(String, Instant)> = if payload.multiple {
            let newer = self.unconfirmed.split_off(&(payload.delivery_tag + 1));
            std::mem::replace(&mut self.unconfirmed, newer)
                .into_values()
                .collect()
        } else {
            self.unconfirmed
                .remove(&payload.delivery_tag)
                .into_iter()
                .collect()
        };
        if !accepted {
            nacked.extend(settled.into_iter().map(|(id, _)| id));
        }
    }

    /// Takes the requests unconfirmed for [`CONFIRM_PATIENCE`] by `now` out of the watch,
    /// into `overdue`; returns their correlation ids.
    fn take_overdue(&mut self, now: Instant) -> Vec<String> {
        let mut ids = Vec::new();
        while let Some(entry) = self.unconfirmed.first_entry() {
            if entry.get().1 + CONFIRM_PATIENCE > now {
                break;
            }
            let seq = *entry.key();
            ids.push(entry.remove().0);
            self.overdue.insert(seq);
        }
        ids
    }

    /// Waits until `deadline` for a reply, a returned request or a nack; fails at once when
    /// the broker blocks our publishers (our requests would wait in its buffers).
    pub(crate) fn next_event(&mut self, deadline: Instant) -> Result<Event, Error> {
        loop {
            let nacked = self.take_confirms();
            if !nacked.is_empty() {
                return Ok(Event::Nacked(nacked));
            }
            let now = Instant::now();
            let overdue = self.take_overdue(now);
            if !overdue.is_empty() {
                return Ok(Event::Unconfirmed(overdue));
            }
            // Wake for confirms only once a request has waited CONFIRM_WAIT unanswered, and
            // again when the oldest one has waited CONFIRM_PATIENCE.
            let oldest = self
                .unconfirmed
                .first_key_value()
                .map(|(_, (_, published))| *published);
            let (confirms, wake) = match oldest {
                Some(at) if at + CONFIRM_WAIT <= now => {
                    (self.confirms.clone(), (at + CONFIRM_PATIENCE).min(deadline))
                }
                Some(at) => (
                    crossbeam_channel::never(),
                    (at + CONFIRM_WAIT).min(deadline),
                ),
                None => (crossbeam_channel::never(), deadline),
            };
            let remaining = wake.saturating_duration_since(now);
            let note = select! {
                recv(self.replies) -> message => return match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => Ok(Event::Delivered(Incoming {
                        body: delivery.body,
                        properties: Properties::from_amqp(delivery.properties),
                    })),
                    Ok(ConsumerMessage::ServerClosedChannel(err))
                    | Ok(ConsumerMessage::ServerClosedConnection(err)) => Err(err.into()),
                    Ok(other) => Err(Error::ConnectionLost(format!(
                        "reply consumer stopped: {other:?}"
                    ))),
                    Err(_) => Err(self.lost("reply consumer closed")),
                },
                recv(self.returns) -> returned => return match returned {
                    Ok(returned) => Ok(Event::Returned(Returned {
                        reply_text: returned.reply_text,
                        properties: Properties::from_amqp(returned.properties),
                    })),
                    Err(_) => Err(self.lost("channel closed")),
                },
                recv(confirms) -> confirm => match confirm {
                    Ok(confirm) => {
                        let mut nacked = Vec::new();
                        self.settle(confirm, &mut nacked);
                        if !nacked.is_empty() {
                            return Ok(Event::Nacked(nacked));
                        }
                        continue;
                    }
                    Err(_) => return Err(self.lost("channel closed")),
                },
                recv(self.blocked) -> note => match note {
                    Ok(note) => note,
                    Err(_) => return Err(self.lost("connection closed")),
                },
                default(remaining) => {
                    if wake < deadline {
                        continue; // time to listen for confirms
                    }
                    return Ok(Event::TimedOut);
                },
            };
            self.note_blocked(note);
            self.check_blocked()?;
        }
    }

    /// The open link, or [`Error::ConnectionLost`] after a close.
    fn link(&self) -> Result<&Link, Error> {
        self.link
            .as_ref()
            .ok_or_else(|| Error::ConnectionLost("the client was closed".into()))
    }

    /// Takes the blocked/unblocked notifications that arrived, and fails while blocked.
    fn check_blocked(&mut self) -> Result<(), Error> {
        while let Ok(note) = self.blocked.try_recv() {
            self.note_blocked(note);
        }
        match &self.blocked_by {
            Some(reason) => Err(Error::Blocked(reason.clone())),
            None => Ok(()),
        }
    }

    fn note_blocked(&mut self, note: ConnectionBlockedNotification) {
        match note {
            ConnectionBlockedNotification::Blocked(reason) => {
                let reason = wire::printable(&reason);
                log::warn!("the broker blocks this connection: {reason}");
                self.blocked_by = Some(reason);
            }
            ConnectionBlockedNotification::Unblocked => {
                log::info!("the broker unblocked this connection");
                self.blocked_by = None;
            }
        }
    }

    /// A lost connection: [`Error::Stalled`] if our watchdog abandoned it, with its reason.
    fn lost(&self, what: &str) -> Error {
        match self.link.as_ref().and_then(|link| link.watchdog.fired()) {
            Some(why) => Error::Stalled(why),
            None => Error::ConnectionLost(what.to_string()),
        }
    }

    /// Consumers of `queue`, for the timeout message; `None` if it can't be told, an error
    /// only if the broker did not answer within [`PROBE_LIMIT`] (the connection is then
    /// abandoned).
    pub(crate) fn consumer_count(&mut self, queue: &str) -> Result<Option<u32>, Error> {
        let Link {
            connection,
            watchdog,
        } = self
            .link
            .as_mut()
            .ok_or_else(|| Error::ConnectionLost("closed".into()))?;
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let probe = watchdog.bounded("to the consumer-count probe", PROBE_LIMIT, || {
            let probe = connection.open_channel(None)?;
            let count = probe
                .queue_declare_passive(queue)?
                .declared_consumer_count();
            probe.close()?;
            Ok::<_, amiquip::Error>(count)
        });
        match probe {
            Ok(count) => Ok(count),
            Err(LinkError::Stalled(why)) => Err(Error::Stalled(why)),
            Err(_) => Ok(None),
        }
    }

    /// Closes the connection (and with it the channel), within [`CLOSE_LIMIT`]: a close the
    /// broker does not answer in time abandons the connection and reports [`Error::Stalled`].
    pub(crate) fn close(mut self) -> Result<(), Error> {
        let Some(Link {
            connection,
            watchdog,
        }) = self.link.take()
        else {
            return Ok(());
        };
        // Closing the connection closes its channel on the broker too: one round trip
        // instead of two. The channel handle then only finds its I/O loop gone.
        Ok(
            watchdog.bounded("to the connection close", CLOSE_LIMIT, || {
                connection.close()
            })?,
        )
    }
}

impl Drop for Session {
    /// Bounds the closes amiquip makes when the channel and the connection are dropped.
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            link.bound_close(CLOSE_LIMIT);
        }
    }
}
