//! Exact Fibonacci numbers of any size, by fast doubling.
//!
//! F(2k) = F(k)·(2·F(k+1) − F(k)) and F(2k+1) = F(k)² + F(k+1)², applied once per bit of n:
//! O(log n) big multiplications instead of the tutorial's exponential recursion.
//!
//! Big integers come from `dashu-int`: of the permissively licensed crates it was the fastest
//! in our measurements (see the README's benchmark section); GMP-based crates are faster but
//! LGPL.

use dashu_int::UBig;

/// fib(n), exactly: fib(0) = 0, fib(1) = 1, fib(n) = fib(n-1) + fib(n-2).
pub fn fib(n: u64) -> UBig {
    if n == 0 {
        return UBig::ZERO;
    }
    // (a, b) = (F(k), F(k+1)) for k = the bits of n read so far, from the top.
    let (mut a, mut b) = (UBig::ZERO, UBig::ONE);
    for bit in (1..u64::BITS - n.leading_zeros()).rev() {
        let even = &a * ((&b << 1) - &a); // F(2k)
        let odd = a.sqr() + b.sqr(); // F(2k+1)
        if (n >> bit) & 1 == 0 {
            (a, b) = (even, odd);
        } else {
            b = even + &odd; // F(2k+2)
            a = odd;
        }
    }
    // The lowest bit: only F(n) is needed, not F(n+1).
    if n & 1 == 0 {
        &a * ((&b << 1) - &a)
    } else {
        a.sqr() + b.sqr()
    }
}

/// fib(n) in ASCII decimal, the reply body of the wire contract.
pub fn fib_decimal(n: u64) -> String {
    fib(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slow, obviously right definition, for comparison.
    fn fib_by_addition(n: u64) -> UBig {
        let (mut a, mut b) = (UBig::ZERO, UBig::ONE);
        for _ in 0..n {
            let next = &a + &b;
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
        assert_eq!(fib(n) + fib(n + 1), fib(n + 2));
    }
}
