//! [`RpcClient::call_many`]'s batch: filling the calls in flight, sending, matching the
//! events of the connection to calls, and recovering from a lost connection. The calls'
//! bookkeeping is [`InFlight`]'s; this decides what happens to them.

use super::{discard, finish, RpcClient};
use crate::amqp::Reconnect;
use crate::error::Error;
use crate::in_flight::{InFlight, Pending};
use crate::request::{RpcReply, RpcRequest};
use crate::session::{Event, CONFIRM_PATIENCE};
use crate::trace::TraceContext;
use std::borrow::Borrow;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Refusals of one request after which an idempotent client replaces its connection (and so
/// its channel): each further multiple of it does so again.
const STUCK_NACKS: u32 = 3;

/// Times a request of an idempotent client goes unconfirmed for [`CONFIRM_PATIENCE`] before
/// the client replaces its connection.
const STUCK_OVERDUE: u32 = 2;

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Reconnecting after a lost connection, within one batch.
struct Recovery {
    backoff: Reconnect,
    /// Why the connection was lost, while it is.
    lost_by: Option<String>,
    /// Why the last attempt to reconnect failed.
    last_attempt: Option<String>,
}

/// What an event means for a batch.
// Lives for one turn of the loop and is moved once: boxing the large variant would cost an
// allocation per reply.
#[allow(clippy::large_enum_variant)]
enum Step<T, R> {
    /// A call's outcome.
    Outcome(Pending<T, R>, Result<RpcReply, Error>),
    /// The connection is to be given up, for this reason.
    Lose(String),
    /// Nothing to act on: wait for the next event.
    Next,
}

impl RpcClient {
    /// Sends every `(tag, request)` of `requests` with up to `in_flight` outstanding;
    /// `on_reply(index, tag, result)` gets each outcome with replies as received (error
    /// replies too). `describe(index, tag)` names a call in messages.
    pub(crate) fn call_many_tagged<T, R, I, F>(
        &mut self,
        requests: I,
        in_flight: usize,
        describe: impl Fn(usize, &T) -> String,
        mut on_reply: F,
    ) -> Result<(), Error>
    where
        R: Borrow<RpcRequest>,
        I: IntoIterator<Item = (T, R)>,
        F: FnMut(usize, T, Result<RpcReply, Error>) -> ControlFlow<()>,
    {
        if self.closed {
            return Err(Error::ConnectionLost("the client was closed".into()));
        }
        let in_flight = in_flight.max(1);
        let mut requests = requests.into_iter().enumerate();
        let mut calls: InFlight<T, R> = InFlight::with_capacity(in_flight);
        let mut recovery = Recovery {
            backoff: Reconnect::new(None, MAX_BACKOFF),
            lost_by: None,
            last_attempt: None,
        };
        // The connection to give up, and why: lost, or one the broker keeps refusing.
        let mut drop_session: Option<String> = None;
        let mut sending = true;
        loop {
            if let Some(cause) = drop_session.take() {
                for (call, err) in self.lose(&mut calls, &cause, &describe) {
                    if on_reply(call.index, call.tag, Err(err)).is_break() {
                        return Ok(());
                    }
                }
                recovery.lost_by = Some(cause);
            }
            while sending && calls.len() < in_flight {
                let Some((index, (tag, request))) = requests.next() else {
                    sending = false;
                    break;
                };
                request.borrow().check()?;
                let trace = TraceContext::span_of(request.borrow().trace.as_ref(), self.trace);
                let call = Pending::new((index, tag, request), Instant::now(), self.timeout, trace);
                calls.insert(Uuid::new_v4().to_string(), call);
            }
            let Some(deadline) = calls.next_deadline() else {
                return Ok(()); // nothing outstanding and nothing more to send
            };
            let now = Instant::now();
            calls.release_refused(now);
            if self.session.is_none()
                && deadline > now
                && !self.recover(deadline, &mut recovery, calls.to_send_len())?
            {
                continue;
            }
            if self.session.is_none() {
                // The connection is lost and the first call's deadline has passed.
                let Some(call) = calls.expire_first() else {
                    continue;
                };
                let err = Error::ConnectionLost(format!(
                    "{} got no reply within {:.1}s and the connection was not back in time \
                     (lost: {}{})",
                    describe(call.index, &call.tag),
                    call.started.elapsed().as_secs_f64(),
                    recovery.lost_by.as_deref().unwrap_or("closed"),
                    recovery
                        .last_attempt
                        .as_deref()
                        .map(|why| format!("; last attempt: {why}"))
                        .unwrap_or_default()
                ));
                if on_reply(call.index, call.tag, Err(err)).is_break() {
                    return Ok(());
                }
                continue;
            }
            let event = self.send_and_wait(&mut calls, deadline)?;
            match self.on_event(event, &mut calls, deadline, &describe)? {
                Step::Outcome(call, result) => {
                    if on_reply(call.index, call.tag, result).is_break() {
                        return Ok(());
                    }
                }
                Step::Lose(cause) => drop_session = Some(cause),
                Step::Next => {}
            }
        }
    }

    /// While the connection is lost: one round over every broker. `Ok(true)` when connected
    /// again; `Ok(false)` after waiting (up to `deadline`) for the next attempt.
    fn recover(
        &mut self,
        deadline: Instant,
        recovery: &mut Recovery,
        to_send: usize,
    ) -> Result<bool, Error> {
        match self.reopen(deadline) {
            Ok(()) => {
                recovery.backoff.succeeded();
                recovery.last_attempt = None;
                if let Some(cause) = recovery.lost_by.take() {
                    log::warn!(
                        "reconnected to {} after the connection was lost ({cause}); \
                         sending {to_send} call(s) again",
                        self.brokers[self.next_broker - 1],
                    );
                }
                Ok(true)
            }
            Err(err) if err.is_refusal() => Err(err),
            Err(err) => {
                let delay = recovery.backoff.failed().unwrap_or(MAX_BACKOFF);
                log::warn!(
                    "cannot reconnect ({err}); trying again in {:.1}s",
                    delay.as_secs_f64()
                );
                recovery.last_attempt = Some(err.to_string());
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(delay.min(left));
                Ok(false)
            }
        }
    }

    /// Sends what is due, each with what is left of its own deadline, then waits for the next
    /// event up to `deadline` (or until a refused request is due again). A connection lost
    /// while sending is the event.
    fn send_and_wait<T, R: Borrow<RpcRequest>>(
        &mut self,
        calls: &mut InFlight<T, R>,
        deadline: Instant,
    ) -> Result<Result<Event, Error>, Error> {
        let Some(session) = self.session.as_mut() else {
            return Ok(Err(Error::ConnectionLost("the connection is gone".into())));
        };
        while let Some((id, call)) = calls.next_to_send() {
            let remaining = call.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                continue; // it times out below
            }
            match session.publish(
                &self.queue,
                call.request.borrow(),
                call.trace.as_ref(),
                &id,
                remaining,
            ) {
                Ok(seq) => call.seq = Some(seq),
                Err(err) if err.is_connection_loss() => {
                    calls.send_first(id);
                    return Ok(Err(err));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(session.next_event(calls.wake_at(deadline)))
    }

    /// What `event` means for the calls in flight: a call's outcome, a connection to give up
    /// (and why), or nothing yet.
    fn on_event<T, R>(
        &mut self,
        event: Result<Event, Error>,
        calls: &mut InFlight<T, R>,
        deadline: Instant,
        describe: &impl Fn(usize, &T) -> String,
    ) -> Result<Step<T, R>, Error> {
        let step = match event {
            Ok(Event::Delivered(delivery)) => {
                let id = delivery.properties.correlation_id().unwrap_or("");
                let Some(mut call) = calls.take(id) else {
                    discard(&delivery);
                    return Ok(Step::Next);
                };
                if let (Some(seq), Some(session)) = (call.seq, self.session.as_mut()) {
                    session.answered(seq);
                }
                let trace = call.trace.take();
                let reply = finish(delivery, call.started, trace, || {
                    describe(call.index, &call.tag)
                });
                Step::Outcome(call, Ok(reply))
            }
            Ok(Event::Returned(returned)) => {
                let id = returned.properties.correlation_id().unwrap_or("");
                let Some(call) = calls.take(id) else {
                    return Ok(Step::Next);
                };
                Step::Outcome(call, Err(self.no_route(returned)))
            }
            Ok(Event::Unconfirmed(ids)) => self.unconfirmed(calls, ids, describe),
            Ok(Event::Nacked(ids)) => self.nacked(calls, ids, describe),
            Ok(Event::TimedOut) => {
                if Instant::now() < deadline {
                    return Ok(Step::Next); // a refused request is due again
                }
                let Some(call) = calls.expire_first() else {
                    return Ok(Step::Next);
                };
                let mut what = describe(call.index, &call.tag);
                if call.nacks > 0 {
                    // Refused to the end: it never reached the queue.
                    what.push_str(&format!(" (refused by the broker {} times)", call.nacks));
                }
                let err = self.timed_out(&what, call.started);
                Step::Outcome(call, Err(err))
            }
            Err(err) if err.is_connection_loss() => {
                let cause = match err {
                    Error::ConnectionLost(why) => why,
                    other => other.to_string(),
                };
                log::warn!(
                    "connection to the broker lost ({cause}) with {} call(s) in flight",
                    calls.len()
                );
                Step::Lose(cause)
            }
            Err(err) => return Err(err),
        };
        Ok(step)
    }

    /// Requests unconfirmed for long: maybe dropped without a nack. Only a call that may run
    /// twice can be sent again (the broker may have taken it after all).
    fn unconfirmed<T, R>(
        &self,
        calls: &mut InFlight<T, R>,
        ids: Vec<String>,
        describe: &impl Fn(usize, &T) -> String,
    ) -> Step<T, R> {
        let mut stuck = false;
        for id in ids {
            if !self.idempotent {
                if let Some(call) = calls.get_mut(&id) {
                    log::info!(
                        "no confirm for {} within {:.0}s; waiting for its reply",
                        describe(call.index, &call.tag),
                        CONFIRM_PATIENCE.as_secs_f64()
                    );
                }
                continue;
            }
            let Some(call) = calls.unconfirmed(id) else {
                continue;
            };
            log::warn!(
                "no confirm for {} within {:.0}s; sending it again",
                describe(call.index, &call.tag),
                CONFIRM_PATIENCE.as_secs_f64()
            );
            stuck |= call.overdue % STUCK_OVERDUE == 0;
        }
        stuck_connection(stuck, || {
            format!(
                "the broker confirmed none of {STUCK_OVERDUE} sendings of a request on this \
                 connection"
            )
        })
    }

    /// Requests the broker refused (nacked): each is sent again after a backoff.
    fn nacked<T, R>(
        &self,
        calls: &mut InFlight<T, R>,
        ids: Vec<String>,
        describe: &impl Fn(usize, &T) -> String,
    ) -> Step<T, R> {
        let mut stuck = false;
        for id in ids {
            let Some((call, wait)) = calls.refused(id, Instant::now()) else {
                continue;
            };
            stuck |= self.idempotent && call.nacks % STUCK_NACKS == 0;
            log::warn!(
                "the broker refused (nacked) {}; sending it again in {:.1}s",
                describe(call.index, &call.tag),
                wait.as_secs_f64()
            );
        }
        stuck_connection(stuck, || {
            format!("the broker refused a request {STUCK_NACKS} times on this connection")
        })
    }

    /// The connection is lost: drops it and sorts the calls in flight. Those whose requests
    /// the broker never took are queued to be sent again, and so are the others when the
    /// procedure is idempotent; otherwise those fail with [`Error::MaybeRan`] and are
    /// returned.
    fn lose<T, R>(
        &mut self,
        calls: &mut InFlight<T, R>,
        cause: &str,
        describe: &impl Fn(usize, &T) -> String,
    ) -> Vec<(Pending<T, R>, Error)> {
        let Some(mut session) = self.session.take() else {
            return Vec::new();
        };
        let nacked = session.take_confirms();
        // Sent ones in the order they were first sent.
        let sent: Vec<(String, bool)> = calls
            .sent_except(&nacked)
            .into_iter()
            .map(|(id, seq)| (id, session.confirmed(seq)))
            .collect();
        drop(session); // bounded by CLOSE_LIMIT
        let mut failed = Vec::new();
        let mut again: VecDeque<String> = VecDeque::new();
        for (id, confirmed) in sent {
            if self.idempotent {
                again.push_back(id);
                continue;
            }
            let Some(call) = calls.take(&id) else {
                continue;
            };
            let err = Error::MaybeRan {
                call: describe(call.index, &call.tag),
                cause: cause.to_string(),
                confirmed,
            };
            failed.push((call, err));
        }
        calls.resend_after_loss(again, nacked);
        failed
    }
}

/// A connection on which the broker keeps refusing or ignoring a request (`stuck`) is given
/// up, for the reason `cause` gives; else nothing to act on.
fn stuck_connection<T, R>(stuck: bool, cause: impl FnOnce() -> String) -> Step<T, R> {
    if !stuck {
        return Step::Next;
    }
    let cause = cause();
    // Seen on RabbitMQ 3.10 around a quorum queue's leader change: a channel opened
    // meanwhile stays refused or ignored. A new connection clears it.
    log::warn!("{cause}; connecting again");
    Step::Lose(cause)
}
