#!/usr/bin/env python3
"""Echoes each line of stdin as it arrives: the bench's Python handler for rpc-server, the same
file run both ways. With `--protocol lines` it is kept and echoes one request per line; with
`--protocol exec` (a process per request) stdin is the body without a newline, and so is the
reply."""
import sys

for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
