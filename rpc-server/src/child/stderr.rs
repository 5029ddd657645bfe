//! A command's stderr to the server's log, a line at a time and bounded per request; its last
//! non-empty line kept for the error reply.

use super::COMMAND_LOG;
use rpc_client::wire;
use std::io::{self, Read};
use std::process::ChildStderr;

/// stderr lines logged per request; the rest are counted.
const LOGGED_STDERR_LINES: usize = 20;

/// Bytes of one stderr line kept (for the log and the error message); the rest is dropped.
const STDERR_LINE_BYTES: usize = 1024;

/// The command's stderr, a line at a time: the first [`LOGGED_STDERR_LINES`] go to the log,
/// the last non-empty one is kept for the error reply.
pub(crate) struct StderrLog {
    pid: u32,
    line: Vec<u8>,
    last: Option<Vec<u8>>,
    lines: usize,
}

impl StderrLog {
    /// The stderr of process `pid` (which the log lines name).
    pub(crate) fn new(pid: u32) -> StderrLog {
        StderrLog {
            pid,
            line: Vec::new(),
            last: None,
            lines: 0,
        }
    }

    /// Takes in what the process wrote, logging each line it completes.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.end_line();
            } else if self.line.len() < STDERR_LINE_BYTES {
                self.line.push(byte);
            }
        }
    }

    /// Reads what the non-blocking `pipe` holds into the log; once it is closed (or cannot be
    /// read), drops it (`None`).
    pub(crate) fn drain(&mut self, pipe: &mut Option<ChildStderr>) {
        let Some(stderr) = pipe.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 8192];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => self.feed(&chunk[..read]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        *pipe = None;
    }

    fn end_line(&mut self) {
        if self.line.iter().all(u8::is_ascii_whitespace) {
            self.line.clear();
            return;
        }
        self.lines += 1;
        if self.lines <= LOGGED_STDERR_LINES {
            log::warn!(target: COMMAND_LOG, "[{}] {}", self.pid, shown(&self.line));
        }
        self.last = Some(std::mem::take(&mut self.line));
    }

    /// The last non-empty line, printable, once the command is done.
    pub(crate) fn finish(&mut self) -> Option<String> {
        self.end_line();
        if self.lines > LOGGED_STDERR_LINES {
            log::warn!(
                target: COMMAND_LOG,
                "[{}] … {} more stderr lines not logged",
                self.pid,
                self.lines - LOGGED_STDERR_LINES
            );
        }
        self.last.as_deref().map(shown)
    }
}

fn shown(line: &[u8]) -> String {
    wire::printable(String::from_utf8_lossy(line).trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_non_empty_line_is_kept_printable_and_bounded() {
        let mut log = StderrLog::new(1);
        log.feed(b"first\nsec");
        log.feed(b"ond \x1b[31mred\n\n  \n");
        assert_eq!(log.finish().as_deref(), Some("second ?[31mred"));
        let mut log = StderrLog::new(1);
        log.feed(&vec![b'x'; 3 * STDERR_LINE_BYTES]);
        log.feed(
            b"
",
        );
        assert_eq!(log.last.as_ref().map(Vec::len), Some(STDERR_LINE_BYTES));
        assert_eq!(StderrLog::new(1).finish(), None);
    }

    #[test]
    fn lines_past_the_logged_ones_are_counted() {
        let mut log = StderrLog::new(1);
        for i in 0..LOGGED_STDERR_LINES + 5 {
            log.feed(format!("line {i}\n").as_bytes());
        }
        assert_eq!(log.lines, LOGGED_STDERR_LINES + 5);
        let last = format!("line {}", LOGGED_STDERR_LINES + 4);
        assert_eq!(log.finish(), Some(last));
    }
}
