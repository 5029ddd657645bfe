#!/usr/bin/env python3
"""Reference RPC client for interop tests: a RabbitMQ "tutorial six" peer in pika.

Written from the tutorial's wire contract (not copied): for each n, publishes
body=str(n) to the default exchange with routing key QUEUE, a fresh uuid4
correlation_id and reply_to set to an exclusive server-named callback queue
(or amq.rabbitmq.reply-to with --direct-reply-to); waits for the reply whose
correlation_id matches, discards any others, and prints the body, one per line.
With --raw the arguments are request bodies sent as they are (their bytes, e.g.
UTF-8 text) instead of numbers, and each reply body is printed decoded as UTF-8:
a client of any served command (rpc-server -- CMD), not only of Fibonacci; an
error reply (header x-rpc-error, which the tutorial does not know) is then
reported on stderr with exit status 5. Such replies come only to requests that
ask for them (--error-replies: AMQP type "x-rpc-error-replies"); without it, a
request our server cannot serve gets no reply, as from a tutorial server.

Exit status: 0 ok, 1 timeout or error, 5 error reply with --raw (message on stderr).
"""
import argparse
import os
import sys
import time
import uuid

import pika

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="+", metavar="N",
                   help="n of each fib(n); with --raw, each request body")
    p.add_argument("--raw", action="store_true",
                   help="send each argument as the request body as is; print replies "
                        "decoded as UTF-8")
    p.add_argument("--queue", default="rpc_queue")
    p.add_argument("--url", help="broker URL (default: $AMQP_URI or local guest)",
                   default=os.environ.get("AMQP_URI", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for each reply (default 30)")
    p.add_argument("--error-replies", action="store_true",
                   help="ask for error replies (type=x-rpc-error-replies), as rpc-client does")
    p.add_argument("--direct-reply-to", action="store_true",
                   help="use amq.rabbitmq.reply-to instead of an own queue")
    decl = p.add_mutually_exclusive_group()
    decl.add_argument("--declare-quorum", action="store_true",
                      help="declare QUEUE durable quorum before calling")
    decl.add_argument("--declare-classic", action="store_true",
                      help="declare QUEUE classic non-durable before calling")
    decl.add_argument("--declare-durable", action="store_true",
                      help="declare QUEUE classic durable before calling")
    args = p.parse_args()
    if args.raw:
        # The arguments' own bytes (os.fsencode undoes Python's decoding of argv).
        bodies = [os.fsencode(a) for a in args.n]
        sys.stdout.reconfigure(encoding="utf-8")
    else:
        try:
            bodies = [str(int(a)).encode() for a in args.n]
        except ValueError as err:
            p.error(f"N must be an integer ({err}); use --raw to send text")

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    if args.declare_quorum:
        ch.queue_declare(queue=args.queue, durable=True,
                         arguments={"x-queue-type": "quorum"})
    elif args.declare_classic:
        ch.queue_declare(queue=args.queue)
    elif args.declare_durable:
        ch.queue_declare(queue=args.queue, durable=True)

    if args.direct_reply_to:
        reply_to = DIRECT_REPLY_TO
    else:
        reply_to = ch.queue_declare(queue="", exclusive=True).method.queue

    replies = {}

    def on_reply(_channel, _method, props, body):
        replies[props.correlation_id] = (props.headers or {}).get("x-rpc-error"), body

    # Consume before publishing (mandatory for direct reply-to, which also
    # requires auto_ack; the tutorial uses auto_ack for its own queue too).
    ch.basic_consume(queue=reply_to, on_message_callback=on_reply,
                     auto_ack=True)

    for body in bodies:
        corr_id = str(uuid.uuid4())
        ch.basic_publish(
            exchange="",
            routing_key=args.queue,
            properties=pika.BasicProperties(
                reply_to=reply_to, correlation_id=corr_id,
                type="x-rpc-error-replies" if args.error_replies else None),
            body=body,
        )
        deadline = time.monotonic() + args.timeout
        while corr_id not in replies:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"rpc_client.py: timed out after {args.timeout:g}s "
                      f"waiting for the reply to {body.decode(errors='replace')!r} "
                      f"on queue {args.queue!r}",
                      file=sys.stderr)
                conn.close()
                return 1
            conn.process_data_events(time_limit=min(left, 1.0))
        error, reply = replies.pop(corr_id)
        replies.clear()  # anything else carries a stale or foreign id
        if args.raw and error is not None:
            code = error.decode(errors="replace") if isinstance(error, bytes) else error
            print(f"rpc_client.py: error reply (x-rpc-error: {code}): "
                  f"{reply.decode(errors='replace')}", file=sys.stderr)
            conn.close()
            return 5
        try:
            print(reply.decode("utf-8"), flush=True)
        except UnicodeDecodeError as err:
            print(f"rpc_client.py: reply to {body.decode(errors='replace')!r} is not "
                  f"UTF-8 ({err})", file=sys.stderr)
            conn.close()
            return 1

    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
