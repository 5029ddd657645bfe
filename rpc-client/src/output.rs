//! What `rpc-client` prints on stdout: results in argument order, as they become available.

use crate::client::FibonacciRpcClient;
use crate::error::Error;
use std::io::{self, Write};
use std::ops::ControlFlow;

/// Calls fib(n) for every n of `numbers` with up to `in_flight` calls outstanding, writing
/// each result to `out` on its own line in argument order as soon as it and every result
/// before it are known.
///
/// Stops at the first failure in that order, after writing everything before it, and returns
/// that failure. A reader that closed the pipe (`| head`) ends the calls without an error.
pub fn print_in_order(
    client: &mut FibonacciRpcClient,
    numbers: &[u64],
    in_flight: usize,
    out: &mut dyn Write,
) -> Result<(), PrintError> {
    let mut results: Vec<Option<Result<String, Error>>> = Vec::new();
    results.resize_with(numbers.len(), || None);
    let mut next = 0;
    let mut failure: Option<PrintError> = None;
    client.call_many(numbers.iter().copied(), in_flight, |index, _, result| {
        results[index] = Some(result.map(|reply| reply.value));
        while let Some(done) = results.get_mut(next).and_then(Option::take) {
            next += 1;
            let written = match done {
                Ok(value) => writeln!(out, "{value}"),
                Err(err) => {
                    failure = Some(PrintError::Call(err));
                    return ControlFlow::Break(());
                }
            };
            if let Err(err) = written {
                // A closed pipe ends the output without a failure; no more calls are made.
                if err.kind() != io::ErrorKind::BrokenPipe {
                    failure = Some(PrintError::Write(err));
                }
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    ignore_broken_pipe(out.flush()).map_err(PrintError::Write)
}

/// `Ok` for a write that failed only because the reader closed the pipe (`| head`): that is the
/// reader's choice, not our failure.
pub fn ignore_broken_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Why [`print_in_order`] stopped early.
#[derive(Debug)]
pub enum PrintError {
    /// A call failed (or the connection was lost).
    Call(Error),
    /// Writing the output failed.
    Write(io::Error),
}

impl From<Error> for PrintError {
    fn from(err: Error) -> Self {
        PrintError::Call(err)
    }
}

impl std::fmt::Display for PrintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrintError::Call(err) => err.fmt(f),
            PrintError::Write(err) => write!(f, "cannot write the results: {err}"),
        }
    }
}

impl std::error::Error for PrintError {}
