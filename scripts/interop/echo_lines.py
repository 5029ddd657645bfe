#!/usr/bin/env python3
"""Echoes each line of stdin as it arrives: the bench's Python handler for rpc-server, the same
file run both ways. With `--protocol lines` it is kept and echoes one request per line; with
`--protocol exec` (a process per request) stdin is the body without a newline, and so is the
reply. An argument MS makes it spin the CPU for MS milliseconds per request first (a
CPU-bound handler, for the rows that add workers)."""
import sys
import time

burn = float(sys.argv[1]) / 1000 if len(sys.argv) > 1 else 0.0
for line in sys.stdin:
    if burn:
        end = time.process_time() + burn
        while time.process_time() < end:
            pass
    sys.stdout.write(line)
    sys.stdout.flush()
