#!/usr/bin/env python3
"""Sequential calls per second of the RabbitMQ tutorial-six RPC client (pika).

The client is the tutorial's FibonacciRpcClient as it stands (one blocking
connection, an exclusive server-named callback queue or amq.rabbitmq.reply-to,
a fresh uuid4 correlation_id per call, process_data_events until the reply
with that id arrives), wrapped in a timing loop: WARMUP untimed calls, then
CALLS timed ones, one at a time. Used by scripts/bench.sh as the baseline our
`rpc-client bench --in-flight 1` is compared with.

Prints the tab-separated header and result line of `rpc-client bench --tsv`.
Exit status: 0 ok, 1 timeout, wrong reply or broker error (message on stderr).
"""
import argparse
import os
import sys
import time
import uuid

import pika

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class FibonacciRpcClient:
    """The tutorial's client, plus a per-call deadline so a bench cannot hang."""

    def __init__(self, url, queue, direct_reply_to, timeout):
        self.queue = queue
        self.timeout = timeout
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        if direct_reply_to:
            self.callback_queue = DIRECT_REPLY_TO
        else:
            result = self.channel.queue_declare(queue="", exclusive=True)
            self.callback_queue = result.method.queue
        self.channel.basic_consume(queue=self.callback_queue,
                                   on_message_callback=self.on_response,
                                   auto_ack=True)
        self.response = None
        self.corr_id = None

    def on_response(self, _ch, _method, props, body):
        if self.corr_id == props.correlation_id:
            self.response = body

    def call(self, n):
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            properties=pika.BasicProperties(reply_to=self.callback_queue,
                                            correlation_id=self.corr_id),
            body=str(n))
        deadline = time.monotonic() + self.timeout
        while self.response is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to fib({n}) on queue {self.queue!r} "
                                   f"within {self.timeout:g}s")
            self.connection.process_data_events(time_limit=min(left, 1.0))
        return self.response

    def close(self):
        self.connection.close()


def percentile_ms(sorted_s, q):
    if not sorted_s:
        return 0.0
    index = min(len(sorted_s) - 1, max(0, round(q * len(sorted_s)) - 1))
    return sorted_s[index] * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", default="rpc_queue")
    p.add_argument("--url", help="broker URL (default: $AMQP_URI or local guest)",
                   default=os.environ.get("AMQP_URI", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--calls", type=int, default=5000, help="timed calls (default 5000)")
    p.add_argument("--warmup", type=int, default=500, help="untimed calls first (default 500)")
    p.add_argument("--n", type=int, default=30, help="the n of every call (default 30)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for each reply (default 30)")
    p.add_argument("--direct-reply-to", action="store_true",
                   help="use amq.rabbitmq.reply-to instead of an own queue")
    args = p.parse_args()
    if args.calls < 1 or args.warmup < 0:
        p.error("--calls must be at least 1 and --warmup at least 0")

    client = FibonacciRpcClient(args.url, args.queue, args.direct_reply_to, args.timeout)
    try:
        expected = None
        for _ in range(args.warmup):
            expected = client.call(args.n)
        latencies = []
        clock = time.perf_counter
        started = clock()
        for _ in range(args.calls):
            t0 = clock()
            reply = client.call(args.n)
            latencies.append(clock() - t0)
            if expected is None:
                expected = reply
            elif reply != expected:
                raise ValueError(f"reply {reply!r} differs from the first one {expected!r}")
        seconds = clock() - started
    except (pika.exceptions.AMQPError, TimeoutError, ValueError) as err:
        print(f"bench_pika.py: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    client.close()

    latencies.sort()
    reply_queue = "direct" if args.direct_reply_to else "exclusive"
    print("calls\tin_flight\treply_queue\tn\tseconds\tcalls_per_s\t"
          "p50_ms\tp90_ms\tp99_ms\tmax_ms\terrors")
    print(f"{args.calls}\t1\t{reply_queue}\t{args.n}\t{seconds:.3f}\t"
          f"{args.calls / seconds:.0f}\t{percentile_ms(latencies, 0.5):.3f}\t"
          f"{percentile_ms(latencies, 0.9):.3f}\t{percentile_ms(latencies, 0.99):.3f}\t"
          f"{latencies[-1] * 1e3:.3f}\t0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
