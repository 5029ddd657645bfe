//! Child processes of the stages: a program run to its end with a deadline ([`run`]), and one
//! kept in the background ([`Bg`], stopped on drop), their output made printable and bounded
//! for failure messages.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How a program run by [`run`] ended.
pub struct Output {
    /// Its command line, for messages.
    pub shown: String,
    /// Its exit code; `None` if a signal ended it or it was killed at the deadline.
    pub code: Option<i32>,
    /// It outlived its deadline and was killed.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Output {
    /// Exited with `code`.
    pub fn exited(&self, code: i32) -> bool {
        self.code == Some(code)
    }

    /// Its stdout without the final newline (as `$(...)` in a shell).
    pub fn out(&self) -> &str {
        self.stdout.trim_end_matches('\n')
    }

    /// Everything about the run, for a failure message: command, status, time, output.
    pub fn describe(&self) -> String {
        let status = match (self.code, self.timed_out) {
            (_, true) => "killed at its deadline".to_string(),
            (Some(code), _) => format!("exit {code}"),
            (None, _) => "ended by a signal".to_string(),
        };
        format!(
            "{}: {status} after {} ms\n  --- stdout\n{}\n  --- stderr\n{}",
            self.shown,
            self.took.as_millis(),
            tail(&self.stdout, 15),
            tail(&self.stderr, 15)
        )
    }
}

/// The last `lines` lines of `text`, [`printable`], indented: child output for a failure
/// message.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("  | {}", printable(line)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `line`, at most 300 characters, with control and bidirectional-override characters shown
/// escaped: safe to print on a terminal.
pub fn printable(line: &str) -> String {
    let risky =
        |c: char| c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    line.chars()
        .take(300)
        .map(|c| match risky(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The command line of `command` for messages (its environment is not shown: passwords live
/// there).
fn shown(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `command` with `stdin` as its input, for at most `within` (then its process group is
/// killed): its exit status, output and time taken.
pub fn run(mut command: Command, stdin: &[u8], within: Duration) -> Output {
    let shown = shown(&command);
    let started = Instant::now();
    let mut child = match command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            return Output {
                stderr: format!("cannot start {shown}: {err}"),
                shown,
                code: None,
                timed_out: false,
                stdout: String::new(),
                took: started.elapsed(),
            }
        }
    };
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take().expect("piped stdin");
    let writer = thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));
    let deadline = started + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => break None,
        }
    };
    let took = started.elapsed();
    if status.is_none() {
        kill_group(&child);
        let _ = child.wait();
    }
    let _ = writer.join();
    Output {
        shown,
        code: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        took,
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// SIGKILL to the process group `child` leads (it was started with `process_group(0)`).
fn kill_group(child: &Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A program in the background, stdout and stderr in `<dir>/<name>.out` and `.err`; killed on
/// drop if it still runs. It stays in the test's process group, so an interrupt from the
/// terminal reaches it too.
pub struct Bg {
    pub name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
}

impl Bg {
    /// Starts `command` (stdin closed).
    pub fn spawn(mut command: Command, dir: &Path, name: &str) -> Bg {
        std::fs::create_dir_all(dir).expect("create the log directory");
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let shown = shown(&command);
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create the stdout file"))
            .stderr(File::create(&err).expect("create the stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        Bg {
            name: name.to_string(),
            child,
            out,
            err,
            status: None,
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `within` for it to exit by itself; SIGKILL after that (`None`).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while self.exited().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            self.kill();
            return None;
        }
        self.status
    }

    /// SIGTERM, then up to `within` for it to exit (SIGKILL after that): its
    /// exit code, `Err` with what happened otherwise.
    pub fn stop(&mut self, within: Duration) -> Result<i32, String> {
        if self.exited().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match self.wait_exit(within) {
            Some(status) => status
                .code()
                .ok_or_else(|| format!("{} ended by signal {:?}", self.name, status.signal())),
            None => Err(format!(
                "{} still ran {within:?} after SIGTERM; killed",
                self.name
            )),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Everything it wrote on stdout so far.
    pub fn stdout(&self) -> String {
        read_text(&self.out)
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        read_text(&self.err)
    }

    /// The tail of its stderr, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "  --- {} (last lines)\n{}",
            self.err.display(),
            tail(&self.stderr(), 15)
        )
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

pub fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}
