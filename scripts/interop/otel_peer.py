#!/usr/bin/env python3
"""Tutorial-six peers in pika instrumented with OpenTelemetry (opentelemetry-instrumentation-pika),
for the interop test of W3C trace context (traceparent / tracestate headers).

The spans are recorded in memory (the SDK's InMemorySpanExporter) and checked here: one trace id
from end to end.

client QUEUE N...: in one parent span ("rpc-job"), calls fib(n) for each n (the instrumentation
  injects the traceparent of its "send" span into each request), prints each reply body, one per
  line. Checks that every recorded span (send, and receive of each reply, whose context the
  instrumentation extracts from the reply's traceparent) and each reply's traceparent has the
  job's trace id, and that the reply's span id is the server's own (not the request's). Prints
  "trace <id>" on stderr.

server QUEUE --count K: serves fib(n) for K requests, then exits. The instrumentation's
  "receive" span continues the request's traceparent; the reply is published inside it (a
  "send" span, whose traceparent goes on the reply). Checks, per request, that the spans and
  the reply's traceparent have the request's trace id; prints that trace id, one per line.

Exit status: 0 ok, 1 a check failed or a timeout (message on stderr).
"""
import argparse
import os
import sys
import time
import uuid

import pika
from opentelemetry import trace
from opentelemetry.instrumentation.pika import PikaInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()


def setup_tracing():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("rabbit-rpc-interop")


def trace_id_of(traceparent):
    """The trace id of a traceparent header value (None if absent or malformed)."""
    if not isinstance(traceparent, str):
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    return parts[1]


def fail(message):
    print(f"otel_peer: {message}", file=sys.stderr)
    sys.exit(1)


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def run_client(args, url):
    tracer = setup_tracing()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    PikaInstrumentor().instrument_channel(channel=ch)
    reply_to = ch.queue_declare(queue="", exclusive=True).method.queue
    replies = {}

    def on_reply(_channel, _method, props, body):
        replies[props.correlation_id] = ((props.headers or {}).get("traceparent"), body)

    ch.basic_consume(queue=reply_to, on_message_callback=on_reply, auto_ack=True)
    reply_parents = []
    with tracer.start_as_current_span("rpc-job") as job:
        job_trace = format(job.get_span_context().trace_id, "032x")
        for n in args.n:
            corr_id = str(uuid.uuid4())
            ch.basic_publish(exchange="", routing_key=args.queue, body=str(n).encode(),
                             properties=pika.BasicProperties(reply_to=reply_to,
                                                             correlation_id=corr_id))
            deadline = time.monotonic() + args.timeout
            while corr_id not in replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"no reply for fib({n}) within {args.timeout}s")
                conn.process_data_events(time_limit=min(left, 1.0))
            traceparent, body = replies.pop(corr_id)
            print(body.decode(), flush=True)
            reply_parents.append(traceparent)
    conn.close()
    spans = EXPORTER.get_finished_spans()
    sends = [s for s in spans if s.kind == trace.SpanKind.PRODUCER]
    receives = [s for s in spans if s.kind == trace.SpanKind.CONSUMER]
    if len(sends) != len(args.n) or len(receives) != len(args.n):
        fail(f"expected {len(args.n)} send and receive spans, got {len(sends)} and "
             f"{len(receives)}: {[s.name for s in spans]}")
    for span in spans:
        got = format(span.context.trace_id, "032x")
        if got != job_trace:
            fail(f"span {span.name!r} is in trace {got}, not the job's {job_trace}")
    send_ids = {format(s.context.span_id, "016x") for s in sends}
    for traceparent in reply_parents:
        if trace_id_of(traceparent) != job_trace:
            fail(f"reply traceparent {traceparent!r} is not in the job's trace {job_trace}")
        if traceparent.split("-")[2] in send_ids:
            fail(f"reply traceparent {traceparent!r} echoes the request's span")
    print(f"trace {job_trace}", file=sys.stderr)


def run_server(args, url):
    setup_tracing()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue=args.queue, durable=True)
    ch.basic_qos(prefetch_count=1)
    PikaInstrumentor().instrument_channel(channel=ch)
    served = []

    def on_request(channel, method, props, body):
        request_trace = trace_id_of((props.headers or {}).get("traceparent"))
        reply_props = pika.BasicProperties(correlation_id=props.correlation_id)
        try:
            reply = str(fib(int(body))).encode()
        except ValueError:
            reply = b"bad request"
        channel.basic_publish(exchange="", routing_key=props.reply_to, body=reply,
                              properties=reply_props)
        channel.basic_ack(delivery_tag=method.delivery_tag)
        served.append((request_trace, (reply_props.headers or {}).get("traceparent")))
        if len(served) >= args.count:
            channel.stop_consuming()

    ch.basic_consume(queue=args.queue, on_message_callback=on_request)
    # Ready: the interop script waits for this consumer.
    ch.start_consuming()
    conn.close()
    spans = EXPORTER.get_finished_spans()
    for i, (request_trace, reply_parent) in enumerate(served):
        if request_trace is None:
            fail(f"request {i + 1} had no valid traceparent")
        if trace_id_of(reply_parent) != request_trace:
            fail(f"reply {i + 1} traceparent {reply_parent!r} is not in trace {request_trace}")
        in_trace = [s for s in spans if format(s.context.trace_id, "032x") == request_trace]
        kinds = sorted(s.kind.name for s in in_trace)
        if kinds != ["CONSUMER", "PRODUCER"]:
            fail(f"request {i + 1}: spans in trace {request_trace}: {kinds}")
        print(request_trace, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["client", "server"])
    p.add_argument("n", nargs="*", type=int, metavar="N", help="client: n of each fib(n)")
    p.add_argument("--queue", default="rpc_queue")
    p.add_argument("--count", type=int, default=1, help="server: requests to serve")
    p.add_argument("--timeout", type=float, default=30.0, help="client: seconds per reply")
    p.add_argument("--url", help="broker URL (default: $AMQP_URI or local guest)",
                   default=os.environ.get("AMQP_URI", "amqp://guest:guest@localhost:5672/"))
    args = p.parse_intermixed_args()
    if args.mode == "client":
        if not args.n:
            p.error("client: give at least one N")
        run_client(args, args.url)
    else:
        run_server(args, args.url)


if __name__ == "__main__":
    main()
