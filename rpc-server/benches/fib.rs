//! fib(n) and its decimal conversion for n = 10^4 … 10^7: `cargo bench -p rpc-server --bench fib`.
//!
//! Prints one tab-separated line per n: n, digits, best compute ms, best to-decimal ms, total.
//! `scripts/bench.sh` puts these beside GMP's (gmpy2) figures for the same n.

use std::time::{Duration, Instant};

fn best_of<T>(runs: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = f();
        best = best.min(started.elapsed());
        last = Some(value);
    }
    (best, last.expect("at least one run"))
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a list of n to measure.
    let ns: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![10_000, 100_000, 1_000_000, 10_000_000]
    } else {
        ns
    };
    println!("n\tdigits\tcompute_ms\tdecimal_ms\ttotal_ms");
    for n in ns {
        let runs = match n {
            0..=100_000 => 20,
            100_001..=1_000_000 => 5,
            _ => 2,
        };
        let (compute, value) = best_of(runs, || rpc_server::fib::fib(n));
        let (decimal, text) = best_of(runs, || value.to_string());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{n}\t{}\t{:.3}\t{:.3}\t{:.3}",
            text.len(),
            ms(compute),
            ms(decimal),
            ms(compute + decimal)
        );
    }
}
