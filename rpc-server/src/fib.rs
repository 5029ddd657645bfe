//! Exact Fibonacci numbers of any size, by fast doubling.
//!
//! F(2k) = F(k)·(2·F(k+1) − F(k)) and F(2k+1) = F(k)² + F(k+1)², applied once per bit of n:
//! O(log n) big multiplications instead of the tutorial's exponential recursion.
//!
//! Big integers come from `dashu-int`: of the permissively licensed crates it was the fastest
//! in our measurements (see `scripts/xtask/README.md`). The `gmp` feature computes with
//! GMP through `rug` instead: 3-4x faster for huge n, but LGPL.

#[cfg(not(feature = "gmp"))]
pub use dashu_int::UBig as Big;
#[cfg(feature = "gmp")]
pub use rug::Integer as Big;

/// fib(n) in ASCII decimal, the reply body of the wire contract.
pub fn fib_decimal(n: u64) -> String {
    fib(n).to_string()
}

/// fib(n), exactly: fib(0) = 0, fib(1) = 1, fib(n) = fib(n-1) + fib(n-2).
#[cfg(feature = "gmp")]
pub fn fib(n: u64) -> Big {
    fast_doubling(
        n,
        (Big::new(), Big::from(1)),
        |a, b| Big::from(a * &(Big::from(b << 1u32) - a)),
        |a, b| Big::from(a.square_ref()) + b.square_ref(),
        |a, b| Big::from(a + b),
    )
}

/// fib(n), exactly: fib(0) = 0, fib(1) = 1, fib(n) = fib(n-1) + fib(n-2).
#[cfg(not(feature = "gmp"))]
pub fn fib(n: u64) -> Big {
    fast_doubling(
        n,
        (Big::ZERO, Big::ONE),
        |a, b| a * ((b << 1) - a),
        |a, b| a.sqr() + b.sqr(),
        |a, b| a + b,
    )
}

/// Walks the bits of n from the top keeping (a, b) = (F(k), F(k+1)), starting from
/// (F(0), F(1)). `even` gives F(2k) = F(k)(2F(k+1) - F(k)), `odd` gives
/// F(2k+1) = F(k)^2 + F(k+1)^2, `add` gives F(2k+2) = F(2k) + F(2k+1). The last, most
/// expensive step computes only the one number needed.
fn fast_doubling(
    n: u64,
    (mut a, mut b): (Big, Big),
    even: impl Fn(&Big, &Big) -> Big,
    odd: impl Fn(&Big, &Big) -> Big,
    add: impl Fn(&Big, &Big) -> Big,
) -> Big {
    if n == 0 {
        return a;
    }
    for bit in (1..u64::BITS - n.leading_zeros()).rev() {
        let (e, o) = (even(&a, &b), odd(&a, &b));
        if (n >> bit) & 1 == 0 {
            (a, b) = (e, o);
        } else {
            b = add(&e, &o);
            a = o;
        }
    }
    if n & 1 == 0 {
        even(&a, &b)
    } else {
        odd(&a, &b)
    }
}

#[cfg(test)]
// `Big::from(x + y)` is needed with rug, whose operators build lazy expressions.
#[allow(clippy::useless_conversion)]
mod tests {
    use super::*;

    /// The slow, obviously right definition, for comparison.
    fn fib_by_addition(n: u64) -> Big {
        let (mut a, mut b) = (Big::from(0u8), Big::from(1u8));
        for _ in 0..n {
            let next = Big::from(&a + &b);
            a = std::mem::replace(&mut b, next);
        }
        a
    }

    #[test]
    fn known_values() {
        let table: [(u64, &str); 9] = [
            (0, "0"),
            (1, "1"),
            (2, "1"),
            (3, "2"),
            (10, "55"),
            (30, "832040"),
            (93, "12200160415121876738"),
            (94, "19740274219868223167"),
            (100, "354224848179261915075"),
        ];
        for (n, expected) in table {
            assert_eq!(fib_decimal(n), expected, "fib({n})");
        }
    }

    #[test]
    fn fib_1000_is_exact() {
        let value = fib_decimal(1000);
        assert_eq!(value.len(), 209);
        assert!(value.starts_with("4346655768693745643568852767504062580256466051737178"));
        assert!(value.ends_with("76137795166849228875"));
    }

    #[test]
    fn agrees_with_addition() {
        for n in (0..300).chain([511, 512, 513, 1023, 1024, 4097, 10_000]) {
            assert_eq!(fib(n), fib_by_addition(n), "fib({n})");
        }
    }

    #[test]
    fn satisfies_the_recurrence_for_large_n() {
        let n = 200_003;
        assert_eq!(Big::from(fib(n) + fib(n + 1)), fib(n + 2));
    }
}
