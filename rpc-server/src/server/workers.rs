//! The threads that run the handler ([`Workers`]): up to N requests handled at once while the
//! consume loop keeps talking to the broker (replies, acks, confirms, heartbeats, a stop).
//!
//! With one worker (the default) the handler runs on the consume loop's own thread: handing
//! each request to another thread and back cost 36–47% of the calls/s at 16 in flight
//! (Fibonacci, prefetch 16, 2 cores, 3 rounds), and one request at a time gains nothing from a
//! thread.

use crate::handler::{Handler, Reply, Request};
use crossbeam_channel::{Receiver, Sender};
use rpc_client::wire::{self, ErrorCode};
use rpc_client::{Properties, ReadProperties, TraceContext};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request as the broker delivered it, as the workers need it: its body and properties, lent
/// to the handler. The AMQP library's delivery is one (see [`crate::server`]); the workers
/// carry it back in [`Done`], to be acked.
pub(crate) trait Delivered: Send + 'static {
    /// Runs `f` with the body and the properties.
    fn lend<R>(&mut self, f: impl FnOnce(&[u8], &Properties) -> R) -> R;
}

/// A request for a worker; `generation` names the connection it came on, `budget` is its
/// caller's deadline counted from when its handling starts.
struct Job<D> {
    generation: u64,
    delivery: D,
    budget: Option<Duration>,
}

/// A handled request: the delivery (to ack) and its reply.
pub(crate) struct Done<D> {
    /// The connection the request came on (see [`Workers::submit`]).
    pub generation: u64,
    /// The request.
    pub delivery: D,
    /// What the handler answered.
    pub reply: Reply,
    /// How long the handler took.
    pub took: Duration,
    /// The server's span of the request, if it is traced (see [`Request::trace`]).
    pub(crate) trace: Option<TraceContext>,
    /// The request's deadline ([`Request::deadline`]) passed before the handler returned:
    /// its caller no longer waits, and the handler ended the work then (a command killed, a
    /// kept program restarted). Nothing is to be sent.
    pub(crate) abandoned: bool,
}

/// N worker threads sharing one handler. They end when the `Workers` is dropped, each after
/// the request it is handling.
pub(crate) struct Workers<D> {
    jobs: Sender<Job<D>>,
    done: Receiver<Done<D>>,
    /// With one worker: the handler, run by [`Workers::submit`] itself.
    inline: Option<Arc<dyn Handler>>,
    size: usize,
    busy: usize,
    /// Whether a request without trace context starts a new trace (`--trace`).
    start_traces: bool,
}

impl<D: Delivered> Workers<D> {
    /// Starts `size` threads running `handler` (none for a size of 1 or less: see the module
    /// documentation); with `start_traces`, a request without trace context gets a new trace.
    pub(crate) fn start(
        handler: Arc<dyn Handler>,
        size: usize,
        start_traces: bool,
    ) -> std::io::Result<Workers<D>> {
        let size = size.max(1);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job<D>>();
        if size == 1 {
            return Ok(Workers {
                jobs,
                done: crossbeam_channel::never(),
                inline: Some(handler),
                size,
                busy: 0,
                start_traces,
            });
        }
        let (finished, done) = crossbeam_channel::unbounded();
        for index in 0..size {
            let queue = queue.clone();
            let finished = finished.clone();
            let handler = Arc::clone(&handler);
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    for Job {
                        generation,
                        delivery,
                        budget,
                    } in queue
                    {
                        let done =
                            run(handler.as_ref(), generation, delivery, budget, start_traces);
                        if finished.send(done).is_err() {
                            break;
                        }
                    }
                })?;
        }
        Ok(Workers {
            jobs,
            done,
            inline: None,
            size,
            busy: 0,
            start_traces,
        })
    }

    /// Whether a worker is free for another request.
    pub(crate) fn has_room(&self) -> bool {
        self.busy < self.size
    }

    /// Whether the handler runs on the caller's thread, in [`Workers::submit`] (one worker).
    pub(crate) fn inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Requests being handled.
    pub(crate) fn busy(&self) -> usize {
        self.busy
    }

    /// Hands `delivery`, which came on connection `generation`, to a free worker, to be
    /// handled within `budget` (see [`Request::deadline`]); its reply comes out of
    /// [`Workers::done`]. With one worker it is handled here and now, and its reply returned.
    pub(crate) fn submit(
        &mut self,
        generation: u64,
        delivery: D,
        budget: Option<Duration>,
    ) -> Option<Done<D>> {
        if let Some(handler) = &self.inline {
            // Handed straight back: a trip through the done channel and the loop's select
            // cost about 1,500 instructions per request.
            return Some(run(
                handler.as_ref(),
                generation,
                delivery,
                budget,
                self.start_traces,
            ));
        }
        self.busy += 1;
        // The workers hold the receiver for as long as `self` lives.
        let _ = self.jobs.send(Job {
            generation,
            delivery,
            budget,
        });
        None
    }

    /// Handled requests, as they finish; each one received must be passed to
    /// [`Workers::finished`].
    pub(crate) fn done(&self) -> &Receiver<Done<D>> {
        &self.done
    }

    /// A request received from [`Workers::done`] frees its worker.
    pub(crate) fn finished(&mut self) {
        self.busy = self.busy.saturating_sub(1);
    }
}

/// Handles `delivery` (see [`handle`]) with the deadline `budget` from now, and times it:
/// abandoned when the budget was spent (the clock is read twice per request, as for the
/// time taken alone).
fn run<D: Delivered>(
    handler: &dyn Handler,
    generation: u64,
    mut delivery: D,
    budget: Option<Duration>,
    start_traces: bool,
) -> Done<D> {
    let started = Instant::now();
    let deadline = budget.and_then(|budget| started.checked_add(budget));
    let (reply, trace) = handle(handler, &mut delivery, deadline, start_traces);
    let took = started.elapsed();
    Done {
        generation,
        delivery,
        reply,
        took,
        trace,
        abandoned: budget.is_some_and(|budget| took >= budget),
    }
}

/// The handler's reply to `delivery`, whose caller waits until `deadline`, and the server's
/// span of it if traced ([`server_span`]); a panic becomes an `internal` error reply.
fn handle(
    handler: &dyn Handler,
    delivery: &mut impl Delivered,
    deadline: Option<Instant>,
    start_traces: bool,
) -> (Reply, Option<TraceContext>) {
    delivery.lend(|body, properties| {
        let trace = server_span(properties, start_traces);
        let request = Request {
            body,
            properties,
            trace: trace.as_ref(),
            deadline,
        };
        let reply =
            catch_unwind(AssertUnwindSafe(|| handler.handle(&request))).unwrap_or_else(|_| {
                log::error!("the handler panicked; answering with an internal error reply");
                Reply::refuse(
                    ErrorCode::Internal,
                    "the server failed while handling the request",
                )
            });
        (reply, trace)
    })
}

/// The server's span of a request with `properties`: a child of its trace context; when it
/// has none or a malformed one (which is never passed on), the root of a new trace if
/// `start_traces` (`--trace`), else none: the request is not traced.
pub(crate) fn server_span(
    properties: &impl ReadProperties,
    start_traces: bool,
) -> Option<TraceContext> {
    TraceContext::span_of(wire::trace_context(properties).as_ref(), start_traces)
}
