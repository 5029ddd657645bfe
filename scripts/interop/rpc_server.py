#!/usr/bin/env python3
"""Reference RPC server for interop tests: a RabbitMQ "tutorial six" peer in pika.

Written from the tutorial's wire contract (not copied): consumes a work queue
with prefetch 1, treats each body as a decimal n, replies fib(n) as decimal to
the request's reply_to via the default exchange with the same correlation_id,
and acks the request after publishing the reply.

Prints "ready" on stdout once consuming; exits 0 on SIGTERM/SIGINT.
"""
import argparse
import os
import signal
import sys

import pika


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", default="rpc_queue")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--quorum", action="store_true",
                      help="declare the queue durable with x-queue-type=quorum, as today's "
                           "tutorial does (default: classic, non-durable, as the original did)")
    kind.add_argument("--durable", action="store_true",
                      help="declare the queue classic and durable")
    p.add_argument("--url", help="broker URL (default: $AMQP_URI or local guest)",
                   default=os.environ.get("AMQP_URI", "amqp://guest:guest@localhost:5672/"))
    args = p.parse_args()

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    if args.quorum:
        ch.queue_declare(queue=args.queue, durable=True,
                         arguments={"x-queue-type": "quorum"})
    elif args.durable:
        ch.queue_declare(queue=args.queue, durable=True)
    else:
        ch.queue_declare(queue=args.queue)
    ch.basic_qos(prefetch_count=1)

    def on_request(channel, method, props, body):
        n = int(body)
        print(f" [.] fib({n})", file=sys.stderr, flush=True)
        channel.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=str(fib(n)),
        )
        channel.basic_ack(delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=args.queue, on_message_callback=on_request)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    print("ready", flush=True)
    # Poll in short slices instead of start_consuming() so a signal only sets
    # a flag and the connection is closed outside any pika callback.
    while not stopping:
        conn.process_data_events(time_limit=0.5)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
