//! `rpc-server` processes: spawned with only the environment a test gives them, their stderr
//! (the log) and stdout kept in files, killed on drop.

use super::load::Checks;
use rpc_client::testing;
use rpc_client::BrokerOptions;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variables the binary reads; cleared so only what a test passes applies.
pub const INHERITED: [&str; 11] = [
    "AMQP_URI",
    "AMQP_HOST",
    "AMQP_PORT",
    "AMQP_VHOST",
    "AMQP_USER",
    "AMQP_PASSWORD",
    "AMQP_PASSWORD_FILE",
    "AMQP_TLS_CA",
    "RPC_QUEUE",
    "RPC_METRICS_ADDR",
    "RUST_LOG",
];

/// An `rpc-server` process, killed (SIGKILL) and reaped on drop if it still runs.
pub struct ServerProc {
    /// Its `--name` (or, for [`ServerProc::spawn_args`], the name of its files).
    pub name: String,
    child: Child,
    log: PathBuf,
    out: PathBuf,
    status: Option<ExitStatus>,
}

impl ServerProc {
    /// Starts `rpc-server ARGS...` with only `env` of the variables it reads (passwords belong
    /// there, not in ARGS, which `ps` shows); its stderr in `<log_dir>/<name>.log`, its stdout
    /// in `<log_dir>/<name>.out`.
    pub fn spawn_args(
        log_dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        ServerProc::spawn_wrapped(log_dir, name, &[], args, env)
    }

    /// [`ServerProc::spawn_args`], run by `wrapper` (a program and its arguments, such as
    /// `setpriv …`, followed by the path of `rpc-server` and `args`) if not empty.
    pub fn spawn_wrapped(
        log_dir: &Path,
        name: &str,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        std::fs::create_dir_all(log_dir).expect("create the server log directory");
        let log = log_dir.join(format!("{name}.log"));
        let out = log_dir.join(format!("{name}.out"));
        let stderr = File::create(&log).expect("create the server log");
        let stdout = File::create(&out).expect("create the server's stdout file");
        let server = env!("CARGO_BIN_EXE_rpc-server");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(server);
                command
            }
            None => Command::new(server),
        };
        command.args(args);
        for variable in INHERITED {
            command.env_remove(variable);
        }
        let child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn rpc-server");
        ServerProc {
            name: name.to_string(),
            child,
            log,
            out,
            status: None,
        }
    }

    /// Starts `rpc-server --queue QUEUE --name NAME ARGS...` (see [`ServerProc::spawn_args`]).
    pub fn spawn(
        log_dir: &Path,
        name: &str,
        queue: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        let all: Vec<&str> = ["--queue", queue, "--name", name]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        ServerProc::spawn_args(log_dir, name, &all, env)
    }

    /// Starts `rpc-server --queue QUEUE --name NAME` on `broker`, given as flags (the password
    /// and the CA file in the environment), then `args`.
    pub fn on_broker(
        log_dir: &Path,
        name: &str,
        queue: &str,
        broker: &BrokerOptions,
        args: &[&str],
    ) -> ServerProc {
        let port = broker.port.to_string();
        let mut all = vec![
            "--host",
            broker.host.as_str(),
            "--port",
            port.as_str(),
            "--vhost",
            broker.vhost.as_str(),
            "--user",
            broker.user.as_str(),
        ];
        if broker.tls {
            all.push("--tls");
        }
        all.extend_from_slice(args);
        let ca = broker.tls_ca.as_ref().map(|p| p.display().to_string());
        let mut env = vec![("AMQP_PASSWORD", broker.password.as_str())];
        if let Some(ca) = &ca {
            env.push(("AMQP_TLS_CA", ca.as_str()));
        }
        ServerProc::spawn(log_dir, name, queue, &all, &env)
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait rpc-server");
        }
        self.status
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many processes it has started that still run (its children), from `/proc`.
    pub fn children(&self) -> usize {
        let parent = self.pid().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                let after_comm = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
                after_comm.split(' ').nth(1) == Some(parent.as_str())
            })
            .count()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Sends SIGKILL.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL rpc-server");
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = testing::wait_until(&format!("{} to exit", self.name), within, || {
            Ok(self.exited().is_some())
        });
        self.exited()
    }

    /// SIGTERM, then up to `within` for the exit. How long it took, or a failure message
    /// (with the log's tail) unless it exited 0.
    pub fn stop(&mut self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return Err(format!("{} had already exited: {status}", self.name));
        }
        self.sigterm();
        match self.wait_exit(within) {
            Some(status) if status.success() => Ok(started.elapsed()),
            Some(status) => Err(format!(
                "{} exited with {status} after SIGTERM\n{}",
                self.name,
                self.log_tail(15)
            )),
            None => Err(format!(
                "{} still runs {within:?} after SIGTERM\n{}",
                self.name,
                self.log_tail(15)
            )),
        }
    }

    /// Waits up to `within` for the process to exit by itself (SIGKILL after that); returns
    /// its status and everything it printed, as text to show when an assertion fails.
    pub fn finish(&mut self, within: Duration) -> (ExitStatus, String) {
        let status = match self.wait_exit(within) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait for rpc-server");
                self.status = Some(status);
                panic!(
                    "{} did not exit within {within:?}; killed\n{}",
                    self.name,
                    self.shown()
                );
            }
        };
        (status, self.shown())
    }

    /// Status, stdout and stderr, for failure messages.
    pub fn shown(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "running".to_string(), |s| s.to_string());
        format!(
            "{}: status: {status}\n--- stdout\n{}--- stderr\n{}",
            self.name,
            self.stdout_text(),
            self.log_text()
        )
    }

    /// Everything it has printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        read_text(&self.out)
    }

    /// Everything it has logged (stderr) so far.
    pub fn log_text(&self) -> String {
        read_text(&self.log)
    }

    /// Its log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// How many of its log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }

    /// The last `lines` lines of its log, indented, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
        format!("  last lines of {}:\n    {tail}", self.log.display())
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Starts servers `<prefix>-a`, `<prefix>-b`, … on `queue` of `broker` (see
/// [`ServerProc::on_broker`]) and waits up to 20 s until all of them consume it; on failure
/// panics with their logs.
pub fn start_servers(
    log_dir: &Path,
    broker: &BrokerOptions,
    queue: &str,
    prefix: &str,
    count: usize,
) -> Vec<ServerProc> {
    let servers: Vec<ServerProc> = (0..count)
        .map(|i| {
            let name = format!("{prefix}-{}", (b'a' + i as u8) as char);
            ServerProc::on_broker(log_dir, &name, queue, broker, &[])
        })
        .collect();
    await_consumers(
        &servers,
        std::slice::from_ref(broker),
        queue,
        Duration::from_secs(20),
    );
    servers
}

/// Waits up to `within` until `queue` has one consumer per server of `servers`; on failure
/// panics with the servers' logs. Returns how long it waited.
pub fn await_consumers(
    servers: &[ServerProc],
    brokers: &[BrokerOptions],
    queue: &str,
    within: Duration,
) -> Duration {
    testing::wait_for_consumers(brokers, queue, servers.len() as u32, within).unwrap_or_else(
        |err| {
            let logs: Vec<String> = servers.iter().map(|s| s.log_tail(10)).collect();
            panic!("{err}\n{}", logs.join("\n"))
        },
    )
}

/// Stops every server with SIGTERM and checks that each exits 0 within `within` and logged
/// no panic.
pub fn stop_servers(checks: &mut Checks, servers: &mut [ServerProc], within: Duration) {
    for server in servers.iter_mut() {
        let result = server.stop(within);
        checks.check(result.is_ok(), || result.err().unwrap_or_default());
        let panics = server.log_count("panicked");
        checks.check(panics == 0, || {
            format!("{} panicked\n{}", server.name, server.log_tail(20))
        });
    }
}
