//! Is this decimal number fib(n)? ([`check_fib`]), without computing fib(n): a reply is
//! checked before it is printed, so that a peer whose arithmetic overflows (the Java tutorial
//! server's int32 answers fib(48) = 512559680; Go's and Rust's u64, fib(100) =
//! 3736710778780434371; JavaScript's doubles, fib(92) = 7540113804746346000) makes the call
//! fail instead of printing a wrong number.
//!
//! - n ≤ 93 (fib(n) fits a u64): compared with the exact value, computed in at most 93 adds.
//! - Larger n: the number of digits, which follows from n (fib(n) = round(φⁿ/√5)), and the
//!   residue modulo the prime p = 2⁶¹ − 1: fib(n) mod p by fast doubling, O(log n)
//!   multiplications, against the decimal string mod p, one pass over its digits. A wrong
//!   number of the right length passes only if it differs from fib(n) by a multiple of p,
//!   about one chance in 2⁶¹ for an arbitrary one (an overflow wraps modulo 2³², 2⁶⁴ or
//!   rounds in binary, none of which is a multiple of p).

/// The Mersenne prime 2⁶¹ − 1.
const P: u64 = (1 << 61) - 1;

/// log10 of the golden ratio φ.
const LOG10_PHI: f64 = 0.208_987_640_249_978_73;

/// log10 of √5.
const LOG10_SQRT5: f64 = 0.349_485_002_168_009_4;

/// Largest n whose fib(n) fits a u64.
const MAX_EXACT: u64 = 93;

/// Why `value` (ASCII digits, at least one) is not fib(`n`), or `Ok`.
pub(super) fn check_fib(n: u64, value: &str) -> Result<(), String> {
    if value.len() > 1 && value.starts_with('0') {
        return Err("a leading zero".into());
    }
    if n <= MAX_EXACT {
        let want = small_fib(n);
        // No leading zero, so one number has one decimal form.
        if value.parse::<u64>() == Ok(want) {
            return Ok(());
        }
        return Err(format!("fib({n}) is {want}"));
    }
    let digits = value.len() as u64;
    let (fewest, most) = digit_bounds(n);
    if digits < fewest || digits > most {
        return Err(format!("{digits} digits; fib({n}) has {fewest}"));
    }
    if decimal_mod_p(value) != fib_mod_p(n) {
        return Err(format!("not fib({n}) (its residue modulo 2^61-1 differs)"));
    }
    Ok(())
}

/// fib(`n`) for n ≤ [`MAX_EXACT`].
fn small_fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

/// The number of decimal digits of fib(`n`) for n > [`MAX_EXACT`] (φⁿ/√5 is then within
/// 10⁻¹⁹ of fib(n)): floor(n·log10 φ − log10 √5) + 1, as a range of one, or of two when the
/// logarithm lies so close to an integer that f64's rounding could put it on either side.
fn digit_bounds(n: u64) -> (u64, u64) {
    let x = n as f64 * LOG10_PHI - LOG10_SQRT5;
    // f64 keeps 53 bits: the product's error is below n·2⁻⁵², plus the constants'.
    let slack = 1e-9 + n as f64 * 1e-15;
    let low = (x - slack).floor() as u64 + 1;
    let high = (x + slack).floor() as u64 + 1;
    (low, high)
}

/// `a · b` mod [`P`], for a, b < P.
fn mul_mod(a: u64, b: u64) -> u64 {
    let x = u128::from(a) * u128::from(b);
    // x = hi·2⁶¹ + lo ≡ hi + lo (mod 2⁶¹ − 1); both are below 2⁶¹.
    let sum = (x as u64 & P) + (x >> 61) as u64;
    let folded = (sum & P) + (sum >> 61);
    if folded >= P {
        folded - P
    } else {
        folded
    }
}

/// `a + b` mod [`P`], for a, b < P.
fn add_mod(a: u64, b: u64) -> u64 {
    let sum = a + b;
    if sum >= P {
        sum - P
    } else {
        sum
    }
}

/// fib(`n`) mod [`P`] by fast doubling: from (F(k), F(k+1)), F(2k) = F(k)·(2F(k+1) − F(k))
/// and F(2k+1) = F(k)² + F(k+1)², one bit of n at a time from the top.
fn fib_mod_p(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for bit in (0..u64::BITS - n.leading_zeros()).rev() {
        let twice_b = add_mod(b, b);
        let c = mul_mod(a, add_mod(twice_b, P - a));
        let d = add_mod(mul_mod(a, a), mul_mod(b, b));
        (a, b) = if n >> bit & 1 == 1 {
            (d, add_mod(c, d))
        } else {
            (c, d)
        };
    }
    a
}

/// The decimal number `digits` (ASCII digits) mod [`P`], 18 digits at a time: each chunk is
/// read by Horner's rule in a u64 (below 10¹⁸ < 2⁶⁰), then folded in with one multiplication
/// mod P by 10 to the chunk's length.
fn decimal_mod_p(digits: &str) -> u64 {
    const CHUNK: usize = 18;
    let read = |chunk: &[u8]| {
        chunk.iter().fold(0u64, |value, d| {
            value * 10 + u64::from(d.wrapping_sub(b'0'))
        })
    };
    let bytes = digits.as_bytes();
    let head = bytes.len() % CHUNK;
    // The short chunk first, so that every later one scales by the same 10¹⁸.
    let mut r = read(&bytes[..head]);
    for chunk in bytes[head..].chunks_exact(CHUNK) {
        r = add_mod(mul_mod(r, 1_000_000_000_000_000_000), read(chunk));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fib(0..=count) in decimal, by schoolbook addition.
    fn fibs(count: usize) -> Vec<String> {
        let add = |a: &[u8], b: &[u8]| -> Vec<u8> {
            // Little-endian digit vectors.
            let mut out = Vec::with_capacity(b.len() + 1);
            let mut carry = 0;
            for i in 0..a.len().max(b.len()) {
                let s = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
                out.push(s % 10);
                carry = s / 10;
            }
            if carry > 0 {
                out.push(carry);
            }
            out
        };
        let (mut a, mut b) = (vec![0u8], vec![1u8]);
        let mut all = Vec::new();
        for _ in 0..=count {
            all.push(a.iter().rev().map(|d| char::from(b'0' + d)).collect());
            let next = add(&a, &b);
            (a, b) = (b, next);
        }
        all
    }

    #[test]
    fn every_fib_up_to_3000_passes_and_its_neighbours_do_not() {
        let all = fibs(3000);
        for (n, value) in all.iter().enumerate() {
            let n = n as u64;
            assert_eq!(check_fib(n, value), Ok(()), "fib({n})");
            if n >= 3 {
                // fib(n-1) differs from fib(n) from n = 3 on, fib(n+1) from n = 2.
                let before = &all[n as usize - 1];
                assert!(
                    check_fib(n, before).is_err(),
                    "fib({n}) accepted fib({})",
                    n - 1
                );
            }
            if (2..3000).contains(&n) {
                let after = &all[n as usize + 1];
                assert!(
                    check_fib(n, after).is_err(),
                    "fib({n}) accepted fib({})",
                    n + 1
                );
            }
        }
    }

    #[test]
    fn overflowed_answers_of_tutorial_servers_fail() {
        // Java (int32), Go and Rust (u64, wrapping), JavaScript (doubles).
        for (n, wrong) in [
            (48, "512559680"),
            (100, "3736710778780434371"),
            (92, "7540113804746346000"),
            (94, "1293530146158671551"),
        ] {
            let err = check_fib(n, wrong).expect_err(wrong);
            assert!(!err.is_empty());
        }
        // fib(200) with two digits swapped: the right length, a wrong residue.
        let all = fibs(200);
        assert_eq!(all[200], "280571172992510140037611932413038677189525");
        let mut swapped = all[200].clone().into_bytes();
        swapped.swap(30, 31);
        let swapped = String::from_utf8(swapped).expect("digits");
        let err = check_fib(200, &swapped).expect_err("swapped digits");
        assert!(err.contains("residue"), "{err}");
        assert!(check_fib(200, &format!("0{}", all[200])).is_err());
        assert!(check_fib(200, &all[200][1..]).is_err());
        assert!(check_fib(30, "0832040").is_err());
        assert!(check_fib(0, "00").is_err());
        assert_eq!(check_fib(0, "0"), Ok(()));
    }

    #[test]
    fn digit_counts_far_out_match_the_residue_arithmetic() {
        // fib(n) mod p by fast doubling agrees with stepping, well past u64.
        let (mut a, mut b) = (0u64, 1u64);
        for n in 0..5000 {
            assert_eq!(fib_mod_p(n), a, "n = {n}");
            (a, b) = (b, add_mod(a, b));
        }
        // Known digit counts: fib(1000) has 209, fib(10^6) has 208988.
        assert_eq!(digit_bounds(1000), (209, 209));
        assert_eq!(digit_bounds(1_000_000).0, 208_988);
        assert_eq!(decimal_mod_p("2305843009213693951"), 0);
        assert_eq!(decimal_mod_p("2305843009213693952"), 1);
    }
}
