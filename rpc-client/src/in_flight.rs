//! The calls of one [`crate::RpcClient::call_many`] batch that await their replies
//! ([`InFlight`]): which call a reply answers (by correlation id), which one times out next,
//! which are to be sent (again), and which wait out the broker's refusal. Pure bookkeeping, no
//! I/O: the client does the sending and the waiting.

use crate::trace::TraceContext;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The first wait before re-sending a request the broker refused; it doubles per refusal of
/// the same request, up to [`NACK_BACKOFF_MAX`].
const NACK_BACKOFF: Duration = Duration::from_millis(100);
const NACK_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A call waiting for its reply.
pub(crate) struct Pending<T, R> {
    /// Its position in the batch, from 0.
    pub index: usize,
    /// The caller's tag for it.
    pub tag: T,
    pub request: R,
    pub started: Instant,
    pub deadline: Instant,
    /// Its publish sequence number on the current connection; `None` while it is to be
    /// (re-)sent.
    pub seq: Option<u64>,
    /// How often the broker refused (nacked) it.
    pub nacks: u32,
    /// How often it went unconfirmed for long and was sent again.
    pub overdue: u32,
    /// Its span, if it is traced: the same on every sending.
    pub trace: Option<TraceContext>,
}

impl<T, R> Pending<T, R> {
    /// A call not sent yet, with `timeout` from `started`, sent as the span `trace` (if any).
    pub(crate) fn new(
        (index, tag, request): (usize, T, R),
        started: Instant,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> Self {
        Pending {
            index,
            tag,
            request,
            started,
            deadline: started + timeout,
            seq: None,
            nacks: 0,
            overdue: 0,
            trace,
        }
    }
}

/// The calls in flight, by correlation id.
pub(crate) struct InFlight<T, R> {
    calls: HashMap<String, Pending<T, R>>,
    /// Calls in the order they were first sent, which is also the order of their deadlines
    /// (answered ones are skipped lazily).
    order: VecDeque<(Instant, String)>,
    /// Calls to send now (new, or again after a lost connection), in this order.
    to_send: VecDeque<String>,
    /// Calls the broker refused, to send again from the given time.
    refused: Vec<(Instant, String)>,
}

impl<T, R> InFlight<T, R> {
    /// No calls, room for `capacity`.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        InFlight {
            calls: HashMap::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            to_send: VecDeque::new(),
            refused: Vec::new(),
        }
    }

    /// How many calls await their outcome.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// How many calls are due to be sent.
    pub(crate) fn to_send_len(&self) -> usize {
        self.to_send.len()
    }

    /// Adds a new call with correlation id `id`, to be sent; calls must be inserted in the
    /// order of their deadlines.
    pub(crate) fn insert(&mut self, id: String, call: Pending<T, R>) {
        self.order.push_back((call.deadline, id.clone()));
        self.to_send.push_back(id.clone());
        self.calls.insert(id, call);
    }

    /// The call with correlation id `id`, if it still awaits its outcome.
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Pending<T, R>> {
        self.calls.get_mut(id)
    }

    /// Takes the call a reply (or a returned request) with correlation id `id` is for; `None`
    /// for an id that is not (or no longer) ours.
    pub(crate) fn take(&mut self, id: &str) -> Option<Pending<T, R>> {
        self.calls.remove(id)
    }

    /// The deadline of the call that times out first, if any call is left.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        // Forget answered calls at the front; the first one left times out first.
        while self
            .order
            .front()
            .is_some_and(|(_, id)| !self.calls.contains_key(id))
        {
            self.order.pop_front();
        }
        self.order.front().map(|(deadline, _)| *deadline)
    }

    /// Takes the call that times out first (its deadline has passed: the caller checked).
    pub(crate) fn expire_first(&mut self) -> Option<Pending<T, R>> {
        let (_, id) = self.order.pop_front()?;
        self.calls.remove(&id)
    }

    /// The earlier of `deadline` and the time the first refused call is due again.
    pub(crate) fn wake_at(&self, deadline: Instant) -> Instant {
        self.refused
            .iter()
            .map(|(due, _)| *due)
            .fold(deadline, Instant::min)
    }

    /// Queues the refused calls due by `now` to be sent again.
    pub(crate) fn release_refused(&mut self, now: Instant) {
        let to_send = &mut self.to_send;
        self.refused.retain(|(due, id)| {
            let due = *due <= now;
            if due {
                to_send.push_back(id.clone());
            }
            !due
        });
    }

    /// The next call to send, its id taken off the queue ([`InFlight::send_first`] puts it
    /// back).
    pub(crate) fn next_to_send(&mut self) -> Option<(String, &mut Pending<T, R>)> {
        while let Some(id) = self.to_send.pop_front() {
            if self.calls.contains_key(&id) {
                let call = self.calls.get_mut(&id)?;
                return Some((id, call));
            }
        }
        None
    }

    /// Puts `id` first in the queue to send: its sending failed.
    pub(crate) fn send_first(&mut self, id: String) {
        self.to_send.push_front(id);
    }

    /// The broker refused (nacked) call `id`: it is sent again after a backoff that doubles
    /// per refusal (0.1 s up to 2 s, counted from `now`). Returns the call and the backoff.
    pub(crate) fn refused(
        &mut self,
        id: String,
        now: Instant,
    ) -> Option<(&Pending<T, R>, Duration)> {
        let call = self.calls.get_mut(&id)?;
        call.seq = None;
        call.nacks += 1;
        let wait = NACK_BACKOFF
            .saturating_mul(1 << (call.nacks - 1).min(5))
            .min(NACK_BACKOFF_MAX);
        self.refused.push((now + wait, id.clone()));
        self.calls.get(&id).map(|call| (call, wait))
    }

    /// Call `id` went unconfirmed for long: it is queued to be sent again. Returns the call.
    pub(crate) fn unconfirmed(&mut self, id: String) -> Option<&Pending<T, R>> {
        let call = self.calls.get_mut(&id)?;
        call.seq = None;
        call.overdue += 1;
        self.to_send.push_back(id.clone());
        self.calls.get(&id)
    }

    /// The calls that were sent on the lost connection, except the `nacked` ones, with their
    /// sequence numbers, in the order they were first sent.
    pub(crate) fn sent_except(&self, nacked: &[String]) -> Vec<(String, u64)> {
        let mut sent: Vec<(&String, &Pending<T, R>)> = self
            .calls
            .iter()
            .filter(|(id, call)| call.seq.is_some() && !nacked.contains(id))
            .collect();
        sent.sort_by_key(|(_, call)| call.index);
        sent.into_iter()
            .filter_map(|(id, call)| call.seq.map(|seq| (id.clone(), seq)))
            .collect()
    }

    /// After a lost connection: nothing is sent on the new one yet. Sends `again` first, then
    /// the `nacked` calls not queued already, then what was queued before.
    pub(crate) fn resend_after_loss(&mut self, mut again: VecDeque<String>, nacked: Vec<String>) {
        for id in nacked {
            if self.calls.contains_key(&id) && !self.to_send.contains(&id) {
                again.push_back(id);
            }
        }
        for call in self.calls.values_mut() {
            call.seq = None;
        }
        again.extend(self.to_send.drain(..));
        self.to_send = again;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(count: usize, start: Instant) -> InFlight<&'static str, ()> {
        let mut calls = InFlight::with_capacity(count);
        for index in 0..count {
            let started = start + Duration::from_millis(index as u64);
            let call = Pending::new((index, "tag", ()), started, Duration::from_secs(1), None);
            calls.insert(format!("id{index}"), call);
        }
        calls
    }

    fn queued(calls: &mut InFlight<&'static str, ()>) -> Vec<String> {
        let mut ids = Vec::new();
        while let Some((id, _)) = calls.next_to_send() {
            ids.push(id);
        }
        ids
    }

    #[test]
    fn a_reply_is_matched_by_correlation_id_once() {
        let mut calls = calls(3, Instant::now());
        assert_eq!(calls.take("id1").map(|call| call.index), Some(1));
        assert!(calls.take("id1").is_none(), "a second reply is not ours");
        assert!(calls.take("someone else's").is_none());
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn the_next_deadline_skips_answered_calls() {
        let start = Instant::now();
        let mut calls = calls(3, start);
        assert_eq!(calls.next_deadline(), Some(start + Duration::from_secs(1)));
        calls.take("id0");
        calls.take("id1");
        assert_eq!(
            calls.next_deadline(),
            Some(start + Duration::from_millis(1002))
        );
        assert_eq!(calls.expire_first().map(|call| call.index), Some(2));
        assert_eq!(calls.next_deadline(), None);
        assert!(calls.expire_first().is_none());
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn new_calls_are_sent_in_order_and_a_failed_send_goes_first_again() {
        let mut calls = calls(3, Instant::now());
        let (id, call) = calls.next_to_send().expect("a call to send");
        call.seq = Some(1);
        assert_eq!(id, "id0");
        calls.send_first("id0".into());
        calls.take("id1"); // answered before it was sent: skipped
        assert_eq!(queued(&mut calls), ["id0", "id2"]);
    }

    #[test]
    fn refused_calls_wait_a_doubling_backoff() {
        let now = Instant::now();
        let mut calls = calls(1, now);
        queued(&mut calls);
        let waits: Vec<Duration> = (0..7)
            .map(|_| calls.refused("id0".into(), now).map(|(_, wait)| wait))
            .collect::<Option<_>>()
            .expect("the call is in flight");
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(calls.get_mut("id0").map(|call| call.nacks), Some(7));
        let deadline = now + Duration::from_secs(10);
        assert_eq!(calls.wake_at(deadline), now + Duration::from_millis(100));
        assert!(calls.refused("unknown".into(), now).is_none());

        calls.release_refused(now + Duration::from_millis(150));
        assert_eq!(queued(&mut calls), ["id0"], "the first refusal is due");
        calls.release_refused(now + Duration::from_secs(3));
        assert_eq!(queued(&mut calls), vec!["id0"; 6]);
        assert_eq!(calls.wake_at(deadline), deadline);
    }

    #[test]
    fn unconfirmed_calls_are_queued_again() {
        let mut calls = calls(2, Instant::now());
        queued(&mut calls);
        calls.get_mut("id1").expect("in flight").seq = Some(7);
        let call = calls.unconfirmed("id1".into()).expect("in flight");
        assert_eq!((call.seq, call.overdue), (None, 1));
        assert!(calls.unconfirmed("gone".into()).is_none());
        assert_eq!(queued(&mut calls), ["id1"]);
    }

    #[test]
    fn after_a_loss_sent_calls_go_first_then_nacked_then_queued() {
        let mut calls = calls(5, Instant::now());
        queued(&mut calls);
        for (id, seq) in [("id3", 1), ("id0", 2), ("id1", 3)] {
            calls.get_mut(id).expect("in flight").seq = Some(seq);
        }
        calls.send_first("id4".into());
        let nacked = vec!["id1".to_string(), "id4".to_string(), "gone".to_string()];
        assert_eq!(
            calls.sent_except(&nacked),
            [("id0".to_string(), 2), ("id3".to_string(), 1)],
            "in the order first sent, without the nacked one"
        );
        let again: VecDeque<String> = ["id0", "id3"].map(String::from).into();
        calls.resend_after_loss(again, nacked);
        assert!(calls.sent_except(&[]).is_empty(), "nothing is sent yet");
        assert_eq!(queued(&mut calls), ["id0", "id3", "id1", "id4"]);
    }
}
