//! Broker control: `rabbitmqctl` (and `scripts/cluster.sh`) run one way, with a deadline and
//! their exit status checked; waiting until a broker accepts connections.

use rpc_client::testing;
use rpc_client::BrokerOptions;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one `rabbitmqctl` or `scripts/cluster.sh` command may take.
pub const CTL_DEADLINE: Duration = Duration::from_secs(120);

/// A way to run `rabbitmqctl` against one node: a command prefix the arguments are added to.
#[derive(Debug, Clone)]
pub struct Ctl {
    prefix: Vec<String>,
}

impl Ctl {
    /// `$RABBITMQCTL` (a command prefix split on whitespace, e.g. `sudo -n rabbitmqctl` or
    /// `scripts/cluster.sh ctl 1`), else `rabbitmqctl` from `PATH` or `/usr/sbin` (Debian puts
    /// it there, which a non-login `PATH` may lack).
    pub fn from_env() -> Ctl {
        let prefix: Vec<String> = std::env::var("RABBITMQCTL")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        if !prefix.is_empty() {
            return Ctl { prefix };
        }
        let in_path = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("rabbitmqctl").is_file())
        });
        let sbin = Path::new("/usr/sbin/rabbitmqctl");
        let program = if !in_path && sbin.exists() {
            sbin.display().to_string()
        } else {
            "rabbitmqctl".to_string()
        };
        Ctl {
            prefix: vec![program],
        }
    }

    /// `rabbitmqctl` against node `index` (1-based) of `scripts/cluster.sh`'s cluster.
    pub fn cluster_node(index: usize) -> Ctl {
        Ctl {
            prefix: vec![
                cluster_script().display().to_string(),
                "ctl".into(),
                index.to_string(),
            ],
        }
    }

    /// Runs the command with `args`; its stdout, or a message with its status and output.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.prefix[0]);
        command.args(&self.prefix[1..]).args(args);
        run(command, CTL_DEADLINE)
    }

    /// The pid (as rabbitmqctl names it) of the connection whose client properties contain
    /// `needle` (e.g. a server's `--name`), if one is open.
    pub fn connection_pid(&self, needle: &str) -> Result<Option<String>, String> {
        let output = self.run(&["list_connections", "-q", "pid", "client_properties"])?;
        Ok(output
            .lines()
            .find(|line| line.contains(needle))
            .and_then(|line| line.split_whitespace().next())
            .map(String::from))
    }

    /// Sets the memory high watermark (a fraction of the machine's memory): 0.00001 sets off a
    /// memory alarm, 0.4 is RabbitMQ's default.
    pub fn set_memory_watermark(&self, fraction: &str) -> Result<(), String> {
        self.run(&["set_vm_memory_high_watermark", fraction])
            .map(|_| ())
    }
}

/// A memory alarm on a node, cleared again on drop (also when a test panics).
pub struct MemoryAlarm {
    ctl: Ctl,
}

impl MemoryAlarm {
    /// Sets off the alarm.
    pub fn raise(ctl: Ctl) -> Result<MemoryAlarm, String> {
        ctl.set_memory_watermark("0.00001")?;
        Ok(MemoryAlarm { ctl })
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if let Err(err) = self.ctl.set_memory_watermark("0.4") {
            eprintln!("cannot clear the memory alarm: {err}");
        }
    }
}

/// `scripts/cluster.sh` of this repository.
fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// Runs `scripts/cluster.sh ARGS`; its stdout, or a message with its status and output.
pub fn cluster_sh(args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(cluster_script());
    command.args(args);
    run(command, CTL_DEADLINE)
}

/// Runs `command` (stdin closed) for at most `within`: its stdout if it exits 0, else a
/// message with the command line, its status (or the deadline) and what it printed. At the
/// deadline its whole process group is killed.
pub fn run(mut command: Command, within: Duration) -> Result<String, String> {
    let shown = format!("{command:?}").replace('"', "");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a deadline kills the children of a script too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => break None,
            Err(err) => return Err(format!("cannot wait for {shown}: {err}")),
        }
    };
    if status.is_none() {
        let _ = Command::new("kill")
            .args(["-KILL", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => Err(format!(
            "{shown} failed ({status}): {}{}",
            stdout.trim(),
            stderr.trim()
        )),
        None => Err(format!(
            "{shown} did not finish within {within:?}; killed: {}{}",
            stdout.trim(),
            stderr.trim()
        )),
    }
}

/// Waits until `broker` accepts AMQP connections (logs in), up to `within`.
pub fn wait_for_broker(broker: &BrokerOptions, within: Duration) -> Result<(), String> {
    testing::wait_until("the broker to accept AMQP connections", within, || {
        Ok(testing::Admin::connect_to(std::slice::from_ref(broker)).is_ok())
    })
    .map_err(|e| e.to_string())
}

/// The RabbitMQ application of the node `ctl` reaches, stopped by [`BrokerApp::stop`]; started
/// again on drop, even when the test panics, so the broker is left running.
pub struct BrokerApp {
    ctl: Ctl,
    broker: BrokerOptions,
    stopped: bool,
}

impl BrokerApp {
    /// The application of the node `ctl` reaches, which serves `broker`.
    pub fn new(ctl: Ctl, broker: BrokerOptions) -> BrokerApp {
        BrokerApp {
            ctl,
            broker,
            stopped: false,
        }
    }

    /// `rabbitmqctl stop_app`; how long it took.
    pub fn stop(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        self.stopped = true; // even if stop_app fails half-way, try to start it again
        self.ctl.run(&["stop_app"])?;
        Ok(started.elapsed())
    }

    /// `rabbitmqctl start_app`, then waits until the broker accepts AMQP connections.
    pub fn start(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        self.ctl.run(&["start_app"])?;
        wait_for_broker(&self.broker, Duration::from_secs(60))?;
        self.stopped = false;
        Ok(started.elapsed())
    }
}

impl Drop for BrokerApp {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("starting the broker application again");
            if let Err(err) = self.start() {
                eprintln!("THE BROKER IS NOT RUNNING: {err}; run `rabbitmqctl start_app`");
            }
        }
    }
}

/// The node of `scripts/cluster.sh` that [`NodeGuard::stop`] stopped (or
/// [`NodeGuard::kill`] killed), started again on drop (even when the test panics).
#[derive(Default)]
pub struct NodeGuard {
    stopped: Option<usize>,
}

impl NodeGuard {
    /// `scripts/cluster.sh stop-node INDEX`; how long it took.
    pub fn stop(&mut self, index: usize) -> Result<Duration, String> {
        let started = Instant::now();
        self.stopped = Some(index); // even if stop-node fails half-way, start it again
        cluster_sh(&["stop-node", &index.to_string()])?;
        Ok(started.elapsed())
    }

    /// `scripts/cluster.sh kill-node INDEX` (SIGKILL to the node's VM); how long it took.
    pub fn kill(&mut self, index: usize) -> Result<Duration, String> {
        let started = Instant::now();
        self.stopped = Some(index);
        cluster_sh(&["kill-node", &index.to_string()])?;
        Ok(started.elapsed())
    }

    /// The node stopped or killed, if any.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// `scripts/cluster.sh start-node INDEX` for the stopped node, if any; how long it took.
    pub fn start(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(index) = self.stopped {
            cluster_sh(&["start-node", &index.to_string()])?;
            self.stopped = None;
        }
        Ok(started.elapsed())
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(index) = self.stopped {
            eprintln!("starting node {index} again");
            if let Err(err) = self.start() {
                eprintln!(
                    "NODE {index} IS STILL STOPPED: {err}; run scripts/cluster.sh start-node {index}"
                );
            }
        }
    }
}

/// A partition made by `scripts/cluster.sh cut-node INDEX`, healed (`scripts/cluster.sh
/// heal`) on drop, even when the test panics.
pub struct Cut {
    node: Option<usize>,
}

/// Why a cut could not be made.
pub enum CutError {
    /// This machine cannot cut a link (no root, no iptables, no cgroup2): cut-node's message.
    Unsupported(String),
    /// It should have worked but failed.
    Failed(String),
}

impl Cut {
    /// Cuts node `index` off from the other nodes.
    pub fn node(index: usize) -> Result<Cut, CutError> {
        let cut = Cut { node: Some(index) };
        match cluster_sh(&["cut-node", &index.to_string()]) {
            Ok(_) => Ok(cut),
            // cut-node exits 77 before it changes anything when the machine lacks what it needs.
            Err(err) if err.contains("exit status: 77") => {
                let mut cut = cut;
                cut.node = None;
                Err(CutError::Unsupported(err))
            }
            Err(err) => Err(CutError::Failed(err)),
        }
    }

    /// Removes the cut; how long it took.
    pub fn heal(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        if self.node.is_some() {
            cluster_sh(&["heal"])?;
            self.node = None;
        }
        Ok(started.elapsed())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if let Some(index) = self.node {
            eprintln!("healing the cut of node {index}");
            if let Err(err) = self.heal() {
                eprintln!("NODE {index} IS STILL CUT OFF: {err}; run scripts/cluster.sh heal");
            }
        }
    }
}
