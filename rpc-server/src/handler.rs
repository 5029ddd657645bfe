//! What the server answers to one request body ([`fib_reply`]): fib(n) in decimal, or an error
//! reply saying why not.

use crate::fib;
use rpc_client::wire::{self, ErrorCode};

/// Log target of the one line per request (` [.] fib(30)`), so it can be turned off alone:
/// at high request rates writing it is a large share of the server's own CPU time.
pub const REQUEST_LOG: &str = "rpc_server::request";

/// log10 of the golden ratio: fib(n) has about `n * LOG10_PHI` decimal digits.
const LOG10_PHI: f64 = 0.208_987_640_249_978_7;

/// The reply to a request `body`: fib(n) for a valid n up to `max_n` whose decimal form has at
/// most `max_reply_bytes` digits, else an error reply's message with its code. Bad input is
/// answered, never an error of the server. A reply too large for the broker is never sent: it
/// would close the channel and bring the request back again and again.
pub fn fib_reply(body: &[u8], max_n: u64, max_reply_bytes: usize) -> (Vec<u8>, Option<ErrorCode>) {
    let too_large = |n: u64, digits: String| {
        let message = format!(
            "fib({n}) has {digits} digits, above this server's reply limit of {max_reply_bytes} bytes"
        );
        log::warn!("refusing request: {message}");
        (message.into_bytes(), Some(ErrorCode::TooLarge))
    };
    match wire::parse_request(body, max_n) {
        Ok(n) => {
            log::info!(target: REQUEST_LOG, " [.] fib({n})");
            // Known too large before computing it (with a digit to spare for rounding).
            let estimate = n as f64 * LOG10_PHI;
            if estimate > max_reply_bytes as f64 + 1.0 {
                return too_large(n, format!("about {estimate:.0}"));
            }
            match std::panic::catch_unwind(|| fib::fib_decimal(n)) {
                Ok(value) if value.len() > max_reply_bytes => too_large(n, value.len().to_string()),
                Ok(value) => (value.into_bytes(), None),
                Err(_) => (
                    format!("computing fib({n}) failed").into_bytes(),
                    Some(ErrorCode::Internal),
                ),
            }
        }
        Err(err) => {
            log::warn!("refusing request: {err}");
            (err.message.into_bytes(), Some(err.code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_refusals() {
        assert_eq!(fib_reply(b"30", 100, 1000), (b"832040".to_vec(), None));
        assert_eq!(fib_reply(b"101", 100, 1000).1, Some(ErrorCode::TooLarge));
        assert_eq!(fib_reply(b"abc", 100, 1000).1, Some(ErrorCode::BadRequest));
    }

    #[test]
    fn replies_over_the_byte_limit_are_refused() {
        // fib(30) = 832040: 6 digits.
        assert_eq!(fib_reply(b"30", 100, 6).1, None);
        let (message, code) = fib_reply(b"30", 100, 5);
        assert_eq!(code, Some(ErrorCode::TooLarge));
        assert!(String::from_utf8_lossy(&message).contains("6 digits"));
        // Refused from the estimate, without computing 20 million digits.
        let (message, code) = fib_reply(b"100000000", u64::MAX, 1000);
        assert_eq!(code, Some(ErrorCode::TooLarge));
        assert!(String::from_utf8_lossy(&message).contains("about 20898764"));
    }
}
