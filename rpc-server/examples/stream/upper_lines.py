#!/usr/bin/env python3
"""An rpc-server handler for --protocol lines: a request is one line on stdin (its body),
the reply is the next line written to stdout. The process stays up between requests.

    rpc-server --queue upper --protocol lines -- python3 upper_lines.py
"""
import sys

for line in sys.stdin:  # one request per line, as each arrives
    body = line.removesuffix("\n")
    print(body.upper(), flush=True)  # flush: the reply is due now
# stdin closed: the server is stopping (or retiring this process); exit.
