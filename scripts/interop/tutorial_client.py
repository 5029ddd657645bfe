#!/usr/bin/env python3
"""A RabbitMQ tutorial-six client in pika that reads replies as the tutorial does.

Written from the tutorial's wire contract (not copied): sends BODY as is to QUEUE with
reply_to (an exclusive server-named callback queue) and a fresh uuid4 correlation_id, and
no other property (nothing that asks for error replies); waits for the reply with that
correlation_id, reads it as the tutorial does (int(body)) and prints " [.] Got N". Unlike
the tutorial, which waits for ever, it gives up after --timeout seconds (for the interop
test: a bad body must get no reply rather than one this client would misread).

Exit status: 0 a number printed, 1 no reply in time (or a reply int() cannot read).
"""
import argparse
import os
import sys
import time
import uuid

import pika


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("body", help="the request body, sent as is")
    p.add_argument("--queue", default="rpc_queue")
    p.add_argument("--url", default=os.environ.get("AMQP_URI", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    callback = ch.queue_declare(queue="", exclusive=True).method.queue
    corr_id = str(uuid.uuid4())
    response = []

    def on_response(_ch, _method, props, body):
        if props.correlation_id == corr_id:
            response.append(body)

    ch.basic_consume(queue=callback, on_message_callback=on_response, auto_ack=True)
    ch.basic_publish(exchange="", routing_key=args.queue,
                     properties=pika.BasicProperties(reply_to=callback, correlation_id=corr_id),
                     body=os.fsencode(args.body))
    deadline = time.monotonic() + args.timeout
    while not response:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"tutorial_client.py: no reply within {args.timeout:g}s", file=sys.stderr)
            conn.close()
            return 1
        conn.process_data_events(time_limit=min(left, 0.5))
    conn.close()
    print(f" [.] Got {int(response[0])}", flush=True)  # the tutorial's int(self.response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
