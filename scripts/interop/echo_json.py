#!/usr/bin/env python3
"""Echoes each request of `rpc-server --protocol json` as its reply: the body as it came,
`body` or `body_base64`. The bench's json handler (rows s), small on purpose: the server's
cost per call, not Python's, is what the rows compare."""
import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    reply = {k: request[k] for k in ("id", "body", "body_base64") if k in request}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
