//! The processes the bench owns: measured commands, run with a time limit in a process group
//! of their own (killed as a group), and rpc-servers, stopped however the bench ends (a failed row, an error, Ctrl-C or SIGTERM: the signal
//! handler only sets a flag the waits here poll; unwinding does the rest).

use anyhow::{bail, Context as _, Result};
use rpc_client::testing::{wait_for_consumer_count, Consumers};
use rpc_client::BrokerOptions;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Has SIGINT, SIGTERM or SIGHUP arrived (after [`catch_signals`])?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on a signal stops the bench at its next poll (within 20 ms), which then cleans up.
pub fn catch_signals() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("cannot install the signal handler")
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// How often waits on a child look at it (and at the signal flag).
const POLL: Duration = Duration::from_millis(20);

/// Runs `command` (stdin empty, stdout to `out`, stderr to `err`), killed after `limit` or on a
/// signal. Fails unless it exits 0; the error quotes the last lines of `err`.
pub fn run(command: &mut Command, out: &Path, err: &Path, limit: Duration) -> Result<()> {
    let file = |path: &Path| {
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
    };
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(file(out)?)
        .stderr(file(err)?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let status = wait(child, limit, &program)?;
    if !status.success() {
        bail!(
            "{program}: {status}; last lines of {}:\n{}",
            err.display(),
            tail(err, 5)
        );
    }
    Ok(())
}

/// Runs `command` with its output on our stderr (a script's messages), killed after `limit`
/// or on a signal; fails unless it exits 0.
pub fn run_attached(command: &mut Command, limit: Duration) -> Result<()> {
    use std::os::fd::AsFd as _;
    let stderr =
        || -> Result<Stdio> { Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?)) };
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(stderr()?)
        .stderr(stderr()?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let status = wait(child, limit, &program)?;
    if !status.success() {
        bail!("{program}: {status}");
    }
    Ok(())
}

/// Waits for `child` to exit; kills it after `limit` or on a signal.
fn wait(mut child: Child, limit: Duration, program: &str) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if interrupted() || Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            check_interrupted()?;
            bail!("{program} still running after {limit:?}; killed");
        }
        std::thread::sleep(POLL);
    }
}

/// SIGKILL to the process group led by `pid` (a command spawned with `process_group(0)`):
/// the processes it started (`time`'s or `cargo bench`'s child) go with it.
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs `command` (all output discarded) and returns its wall time, measured from spawn to
/// exit by a thread blocked in `wait` (no polling delay); killed after `limit` or on a signal.
pub fn timed(command: &mut Command, limit: Duration) -> Result<Duration> {
    let program = command.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id();
    let (done, exited) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done.send((status, started.elapsed()));
    });
    let deadline = started + limit;
    let result = loop {
        match exited.recv_timeout(POLL) {
            Ok((status, took)) => break Ok((status?, took)),
            Err(mpsc::RecvTimeoutError::Timeout) if !interrupted() && Instant::now() < deadline => {
            }
            Err(_) => {
                kill_group(pid);
                break Err(());
            }
        }
    };
    let _ = waiter.join();
    let Ok((status, took)) = result else {
        check_interrupted()?;
        bail!("{program} still running after {limit:?}; killed");
    };
    if !status.success() {
        bail!("{program}: {status}");
    }
    Ok(took)
}

/// The last `lines` lines of file `path`, indented.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect()
}

/// How long a server may take from start to consuming (start-servers.sh's START_WAIT).
const START_WAIT: Duration = Duration::from_secs(30);

/// One rpc-server of the bench, stopped when dropped.
pub struct Server {
    child: Child,
    pub queue: String,
    log: PathBuf,
    /// rpc-server's own stop bound (10 s; plus 6 s and --exec-timeout with a command) and 2 s.
    stop_wait: Duration,
    /// Where `--metrics-addr` listens, if given.
    pub metrics: Option<SocketAddr>,
}

impl Server {
    /// Starts `bin --name NAME ARGS` (log in `log`) and waits until it consumes `queue`.
    pub fn start(
        bin: &Path,
        name: &str,
        queue: &str,
        args: &[String],
        log: &Path,
        brokers: &[BrokerOptions],
    ) -> Result<Server> {
        let mut command = Command::new(bin);
        command.args(["--name", name]).args(args);
        Server::spawn(command, queue, log, brokers, START_WAIT)
    }

    /// Starts `command`, a server of `queue` (its output in `log`), and waits up to `within`
    /// until it consumes `queue`. Its stop bound allows for rpc-server's with a command (`--`).
    pub fn spawn(
        mut command: Command,
        queue: &str,
        log: &Path,
        brokers: &[BrokerOptions],
        within: Duration,
    ) -> Result<Server> {
        let file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let program = command.get_program().to_string_lossy().into_owned();
        let has = |arg: &str| command.get_args().any(|a| a == arg);
        let (serves_command, metrics) = (has("--"), has("--metrics-addr"));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0) // a Ctrl-C at the terminal reaches us only: we stop it once
            .spawn()
            .with_context(|| format!("cannot run {program}"))?;
        let mut server = Server {
            child,
            queue: queue.into(),
            log: log.into(),
            stop_wait: Duration::from_secs(if serves_command { 49 } else { 12 }),
            metrics: None,
        };
        server.wait_consuming(brokers, within).with_context(|| {
            format!(
                "starting {program} on '{queue}'; last lines of {}:\n{}",
                log.display(),
                tail(log, 10)
            )
        })?;
        if metrics {
            server.metrics = Some(server.metrics_addr()?);
        }
        Ok(server)
    }

    /// Waits up to `within` for it to exit by itself (0); SIGKILL after that.
    pub fn wait_exit(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{status} (log: {})", self.log.display());
                }
                return Ok(());
            }
            check_interrupted()?;
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "still running {within:?} after its last call; killed (log: {})",
            self.log.display()
        )
    }

    /// Waits up to `within` until it consumes its queue; fails at once if it exits first.
    pub fn wait_consuming(&mut self, brokers: &[BrokerOptions], within: Duration) -> Result<()> {
        let child = &mut self.child;
        let exited = || match child.try_wait() {
            Ok(Some(status)) => Some(format!("rpc-server exited ({status})")),
            Ok(None) if interrupted() => Some("interrupted".into()),
            Ok(None) => None,
            Err(err) => Some(format!("rpc-server: {err}")),
        };
        wait_for_consumer_count(brokers, &self.queue, Consumers::AtLeast(1), within, exited)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The address of "metrics on http://ADDR/metrics", the line the server logs at start.
    fn metrics_addr(&self) -> Result<SocketAddr> {
        let log = std::fs::read_to_string(&self.log)?;
        let addr = log
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .context("the server did not log its metrics address")?;
        addr.parse()
            .with_context(|| format!("metrics address '{addr}'"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it still runs after its stop bound.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + self.stop_wait;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "rpc-server on '{}' still running {:?} after SIGTERM; killed (log: {})",
            self.queue,
            self.stop_wait,
            self.log.display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("xtask bench: {err:#}");
        }
    }
}

/// Peak RSS (VmHWM) of process `pid`, in kB.
pub fn vmhwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A thread that GETs `/metrics` from a server once a second, as Prometheus would, until
/// dropped; counts the scrapes that succeeded and failed.
pub struct Scraper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Scraper {
    pub fn start(addr: SocketAddr) -> Scraper {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            loop {
                match scrape(addr) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
                match stopped.recv_timeout(Duration::from_secs(1)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => return (ok, failed),
                }
            }
        });
        Scraper {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the thread: (scrapes that succeeded, scrapes that failed).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.take();
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or((0, 1))
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One `GET /metrics`, within 3 s per step; a 200 with a body is a success.
fn scrape(addr: SocketAddr) -> std::io::Result<()> {
    let limit = Some(Duration::from_secs(3));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(limit)?;
    stream.set_write_timeout(limit)?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(4 << 20).read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200 answer"))
    }
}
