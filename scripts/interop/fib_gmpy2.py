#!/usr/bin/env python3
"""fib(n) and its decimal string with GMP (gmpy2): the yardstick for rpc-server's fib.

Prints the same tab-separated columns as `cargo bench -p rpc-server --bench fib`
(n, digits, best compute ms, best to-decimal ms, their sum), with the same number
of runs per n (best of 20 up to 10^5, of 5 up to 10^6, else of 2).
Usage: fib_gmpy2.py [N...]   (default 10^4 10^5 10^6 10^7)
"""
import sys
import time

import gmpy2


def best_of(runs, f):
    best = float("inf")
    value = None
    for _ in range(runs):
        started = time.perf_counter()
        value = f()
        best = min(best, time.perf_counter() - started)
    return best, value


def runs_for(n):
    if n <= 100_000:
        return 20
    if n <= 1_000_000:
        return 5
    return 2


def main():
    try:
        ns = [int(a) for a in sys.argv[1:]] or [10**4, 10**5, 10**6, 10**7]
    except ValueError:
        print(f"usage: {sys.argv[0]} [N...]", file=sys.stderr)
        return 2
    print("n\tdigits\tcompute_ms\tdecimal_ms\ttotal_ms")
    for n in ns:
        runs = runs_for(n)
        compute, value = best_of(runs, lambda n=n: gmpy2.fib(n))
        decimal, text = best_of(runs, lambda v=value: str(v))
        print(f"{n}\t{len(text)}\t{compute * 1e3:.3f}\t{decimal * 1e3:.3f}\t"
              f"{(compute + decimal) * 1e3:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
