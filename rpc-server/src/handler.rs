//! What the server answers to one request body ([`fib_reply`]): fib(n) in decimal, or an error
//! reply saying why not.

use crate::fib;
use rpc_client::wire::{self, ErrorCode};

/// Log target of the one line per request (` [.] fib(30)`), so it can be turned off alone:
/// at high request rates writing it is a large share of the server's own CPU time.
pub const REQUEST_LOG: &str = "rpc_server::request";

/// The reply to a request `body`: fib(n) for a valid n up to `max_n`, else an error reply's
/// message with its code. Bad input is answered, never an error of the server.
pub fn fib_reply(body: &[u8], max_n: u64) -> (Vec<u8>, Option<ErrorCode>) {
    match wire::parse_request(body, max_n) {
        Ok(n) => {
            log::info!(target: REQUEST_LOG, " [.] fib({n})");
            match std::panic::catch_unwind(|| fib::fib_decimal(n)) {
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
        assert_eq!(fib_reply(b"30", 100), (b"832040".to_vec(), None));
        assert_eq!(fib_reply(b"101", 100).1, Some(ErrorCode::TooLarge));
        assert_eq!(fib_reply(b"abc", 100).1, Some(ErrorCode::BadRequest));
    }
}
