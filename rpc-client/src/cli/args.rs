//! The command-line flags both binaries share: where the broker is ([`BrokerArgs`]), how much
//! to log ([`LogArgs`]), durations ([`parse_seconds`]) and `--generate` for man pages and shell
//! completions ([`GenerateArgs`]).
//!
//! This is the one module that knows flag names; the rest of the library takes plain options
//! ([`BrokerOptions`]) and reports typed errors.

use crate::amqp::{has_password, load_ca, mask_uri, shuffle, BrokerOptions};
use crate::amqp::{DEFAULT_PORT, DEFAULT_TLS_PORT};
use crate::error::Error;
use crate::text::printable;
use log::LevelFilter;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Broker flags shared by `rpc-server` and `rpc-client` (flatten into a clap parser).
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    // The doc is the --help text, as clap shows it: `[s]` is not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Broker URI, amqp[s]://USER:PASSWORD@HOST:PORT/VHOST; replaces the five flags below.
    /// Repeat it (or separate URIs with commas) to list the nodes of a cluster: the first
    /// that answers is used, and both binaries move on to the next one after a connection
    /// loss.
    #[arg(long, env = "AMQP_URI", hide_env_values = true, value_name = "URI", global = true,
          value_delimiter = ',', conflicts_with_all = ["host", "port", "vhost", "user", "password"])]
    pub uri: Vec<String>,

    /// Try the URIs in random order (spreads many processes over a cluster's nodes).
    #[arg(long, global = true)]
    pub shuffle: bool,

    /// Broker host name or IP address.
    #[arg(long, env = "AMQP_HOST", default_value = "localhost", global = true)]
    pub host: String,

    /// Broker AMQP port.
    #[arg(long, env = "AMQP_PORT", default_value_t = DEFAULT_PORT, global = true)]
    pub port: u16,

    /// Virtual host.
    #[arg(long, env = "AMQP_VHOST", default_value = "/", global = true)]
    pub vhost: String,

    /// User name.
    #[arg(long, env = "AMQP_USER", default_value = "guest", global = true)]
    pub user: String,

    /// Password (prefer --password-file or the AMQP_PASSWORD variable: every user of the
    /// machine sees command lines in `ps`).
    #[arg(
        long,
        env = "AMQP_PASSWORD",
        hide_env_values = true,
        default_value = "guest",
        hide_default_value = true,
        global = true
    )]
    pub password: String,

    /// File holding the password (a container secret, say), without its trailing newline:
    /// replaces --password, or gives the password of URIs that hold none.
    #[arg(
        long,
        env = "AMQP_PASSWORD_FILE",
        value_name = "FILE",
        global = true,
        conflicts_with = "password"
    )]
    pub password_file: Option<PathBuf>,

    /// Use TLS (implied by an amqps:// URI; the default port becomes 5671).
    #[arg(long, global = true)]
    pub tls: bool,

    /// PEM file with the CA certificate(s) that signed the broker's certificate, trusted in
    /// addition to the system's. Server names are always checked.
    #[arg(long, env = "AMQP_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Seconds to wait for the TCP connection and the AMQP handshake.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds,
          global = true)]
    pub connect_timeout: Duration,
}

impl BrokerArgs {
    /// Resolves the flags (or the URIs) into the list of brokers to try, in order. Every
    /// connection presents itself to the broker as `client_name` (see
    /// [`BrokerOptions::client_name`]). Errors name the flag at fault ([`Error::Config`]).
    pub fn to_options(&self, client_name: &str) -> Result<Vec<BrokerOptions>, Error> {
        let config = |message: String| Error::Config(message);
        let password = match &self.password_file {
            Some(path) => Some(read_password_file(path)?),
            None => None,
        };
        let mut brokers = if self.uri.is_empty() {
            vec![BrokerOptions {
                host: self.host.clone(),
                port: if self.tls && self.port == DEFAULT_PORT {
                    DEFAULT_TLS_PORT
                } else {
                    self.port
                },
                vhost: self.vhost.clone(),
                user: self.user.clone(),
                password: password.clone().unwrap_or_else(|| self.password.clone()),
                tls: self.tls,
                ..BrokerOptions::default()
            }]
        } else {
            self.uri
                .iter()
                .map(|uri| uri.trim())
                .filter(|uri| !uri.is_empty())
                .map(|uri| {
                    let mut options =
                        BrokerOptions::from_uri(uri).map_err(|e| config(e.to_string()))?;
                    if let Some(password) = &password {
                        if has_password(uri) {
                            return Err(config(format!(
                                "'{}' holds a password, and --password-file gives one: give \
                                 it in one place",
                                mask_uri(uri)
                            )));
                        }
                        options.password.clone_from(password);
                    }
                    Ok(options)
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        if brokers.is_empty() {
            return Err(config("--uri / AMQP_URI holds no URI".into()));
        }
        if let Some(path) = &self.tls_ca {
            // Fail at start-up, not at every connection attempt.
            load_ca(path).map_err(|e| config(format!("--tls-ca: {e}")))?;
        }
        for options in &mut brokers {
            options.connect_timeout = self.connect_timeout;
            options.tls_ca.clone_from(&self.tls_ca);
            options.client_name = client_name.to_string();
            if options.tls_ca.is_some() && !options.tls {
                return Err(config(
                    "--tls-ca needs TLS: use an amqps:// URI or --tls".into(),
                ));
            }
            if options.host.is_empty() {
                return Err(config("the broker host is empty".into()));
            }
        }
        if self.shuffle {
            shuffle(&mut brokers);
        }
        Ok(brokers)
    }
}

/// Largest password file read (a password is far shorter; this stops `/dev/zero`).
const MAX_PASSWORD_FILE: u64 = 64 * 1024;

/// The password in file `path` (`--password-file`): its content without trailing line ends
/// (`\n`, `\r\n`). It must be a regular file (or a symlink to one): it is opened without
/// blocking and checked on the open file, so a FIFO, a device, a socket or a directory is
/// refused at once. A file that cannot be read, is not regular, is empty, is not UTF-8 or is
/// over 64 KiB is an [`Error::Config`] naming the file.
pub(super) fn read_password_file(path: &Path) -> Result<String, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |why: &dyn std::fmt::Display| {
        Error::Config(format!(
            "--password-file '{}': {why}",
            printable(&path.to_string_lossy())
        ))
    };
    // O_NONBLOCK: opening a FIFO for reading would wait for a writer; O_NOCTTY: a terminal
    // does not become ours. Neither changes anything for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(&e))?;
    let kind = file.metadata().map_err(|e| fail(&e))?.file_type();
    if !kind.is_file() {
        return Err(fail(&format_args!(
            "not a regular file (a {}); give a file that holds the password",
            describe_file_type(kind)
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PASSWORD_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&e))?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE {
        return Err(fail(&"larger than 64 KiB, not a password"));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(&"not UTF-8 text"))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(fail(&"empty"));
    }
    Ok(password.to_string())
}

/// What a file that is not regular is, for a message.
fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Verbosity flags (flatten into a clap parser). `RUST_LOG`, when set, wins over both.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LogArgs {
    /// More log output on stderr (repeatable: -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output on stderr (repeatable: -qq).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Log lines on stderr as text, or as one JSON object per line (timestamp, level,
    /// target, message, and the fields of the line).
    #[arg(
        long,
        value_enum,
        env = "RPC_LOG_FORMAT",
        default_value_t,
        global = true
    )]
    pub log_format: super::logging::LogFormat,
}

impl LogArgs {
    /// The level these flags select, starting from `default`.
    pub fn level(&self, default: LevelFilter) -> LevelFilter {
        const LEVELS: [LevelFilter; 6] = [
            LevelFilter::Off,
            LevelFilter::Error,
            LevelFilter::Warn,
            LevelFilter::Info,
            LevelFilter::Debug,
            LevelFilter::Trace,
        ];
        let start = LEVELS.iter().position(|l| *l == default).unwrap_or(2) as i32;
        let index = (start + i32::from(self.verbose) - i32::from(self.quiet)).clamp(0, 5);
        LEVELS[index as usize]
    }
}

/// The flags both binaries take, flattened once into each command line: the broker, logging
/// and `--generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub generate: GenerateArgs,
}

/// `--generate KIND`: print a man page or a shell completion script and exit.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct GenerateArgs {
    /// Print a man page (man) or a completion script (complete-bash, complete-zsh,
    /// complete-fish, complete-elvish, complete-powershell) to stdout and exit.
    #[arg(long, value_enum, value_name = "KIND")]
    pub generate: Option<Generate>,
}

impl GenerateArgs {
    /// If `--generate` was given: prints what it asks for `command` (the binary's clap
    /// definition) on stdout (a closed pipe is not an error) and returns `Some` with the
    /// outcome; `None` otherwise.
    pub fn print(&self, command: clap::Command) -> Option<std::io::Result<()>> {
        let kind = self.generate?;
        let written = kind.write(command, &mut std::io::stdout().lock());
        Some(super::output::ignore_broken_pipe(written))
    }
}

/// The command line of a binary, parsed; on an error, prints it with what the user typed made
/// printable ([`crate::text::printable`], line by line), and exits as clap would. clap's own
/// message quotes a refused value raw: an escape sequence in a queue name would reach the
/// terminal. Help and version go out as clap writes them.
///
/// In JSON ([`super::logging::format_from_args`]), the message is one JSON object, and the
/// format is set for the lines written before the logger is installed.
pub fn parse<P: clap::Parser>() -> P {
    let format = super::logging::format_from_args(std::env::args_os());
    super::logging::set_format(format);
    P::try_parse().unwrap_or_else(|err| {
        if !err.use_stderr() {
            err.exit();
        }
        let rendered = err.render().to_string();
        if format == super::LogFormat::Json {
            let program = <P as clap::CommandFactory>::command()
                .get_name()
                .to_string();
            super::logging::stderr_line(log::Level::Error, &program, rendered.trim_end());
        } else {
            for line in rendered.lines() {
                eprintln!("{}", crate::text::printable(line));
            }
        }
        std::process::exit(err.exit_code());
    })
}

/// Checks a binary's clap definition (for its unit tests): clap's own consistency checks,
/// which it makes only when parsing and only in debug builds, and a man page that renders
/// with the exit codes.
#[cfg(any(test, feature = "test-support"))]
pub fn check_command(command: clap::Command) {
    command.clone().debug_assert();
    let mut page = Vec::new();
    Generate::Man
        .write(command, &mut page)
        .expect("render the man page");
    assert!(String::from_utf8_lossy(&page).contains("Exit codes"));
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// A roff man page (`man -l -`).
    Man,
    /// A bash completion script.
    CompleteBash,
    /// A zsh completion script.
    CompleteZsh,
    /// A fish completion script.
    CompleteFish,
    /// An elvish completion script.
    CompleteElvish,
    /// A PowerShell completion script.
    CompletePowershell,
}

impl Generate {
    /// Writes what `self` names for `command` (the binary's clap definition) to `out`.
    pub fn write(self, mut command: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
        use clap_complete::Shell;
        let shell = match self {
            Generate::Man => return clap_mangen::Man::new(command).render(out),
            Generate::CompleteBash => Shell::Bash,
            Generate::CompleteZsh => Shell::Zsh,
            Generate::CompleteFish => Shell::Fish,
            Generate::CompleteElvish => Shell::Elvish,
            Generate::CompletePowershell => Shell::PowerShell,
        };
        let name = command.get_name().to_string();
        clap_complete::generate(shell, &mut command, name, out);
        Ok(())
    }
}

/// Parses a positive number of seconds (`30`, `0.5`) for `--timeout`-style flags.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("'{text}' must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    impl Cli {
        /// Parses `args` alone: the AMQP_* variables of whoever runs the tests are ignored.
        fn try_parse_from(args: &[&str]) -> Result<Cli, clap::Error> {
            use clap::{CommandFactory, FromArgMatches};
            let matches = Cli::command()
                .mut_args(|arg| arg.env(None))
                .try_get_matches_from(args)?;
            Cli::from_arg_matches(&matches)
        }

        fn parse_from(args: &[&str]) -> Cli {
            Cli::try_parse_from(args).expect("valid arguments")
        }
    }

    #[test]
    fn several_uris() {
        let cli = Cli::parse_from(&["x", "--uri", "amqp://a:1,amqp://b:2", "--uri", "amqps://c"]);
        let brokers = cli.broker.to_options("test").expect("valid");
        let hosts: Vec<_> = brokers.iter().map(|b| (b.host.as_str(), b.port)).collect();
        assert_eq!(hosts, [("a", 1), ("b", 2), ("c", 5671)]);
        assert!(brokers.iter().all(|b| b.client_name == "test"));
        assert!(Cli::try_parse_from(&["x", "--uri", "amqp://a", "--host", "b"]).is_err());
    }

    #[test]
    fn bad_uri_is_a_config_error_without_the_password() {
        let cli = Cli::parse_from(&["x", "--uri", "amqp://u:secret@h:notaport"]);
        match cli.broker.to_options("test") {
            Err(Error::Config(message)) => {
                assert!(message.contains("bad port"), "{message}");
                assert!(!message.contains("secret"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn password_file_replaces_the_password_without_its_newline() {
        let dir = std::env::temp_dir().join(format!("rpc-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = |name: &str, content: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, content).expect("write");
            path.display().to_string()
        };
        let secret = file("secret", b"s3 cr:et\r\n");
        let cli = Cli::parse_from(&["x", "--password-file", &secret]);
        let brokers = cli.broker.to_options("test").expect("valid");
        assert_eq!(brokers[0].password, "s3 cr:et");
        // A symlink to a regular file is one.
        let link = dir.join("link").display().to_string();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        let cli = Cli::parse_from(&["x", "--password-file", &link]);
        let brokers = cli.broker.to_options("test").expect("valid");
        assert_eq!(brokers[0].password, "s3 cr:et");
        // It gives the password of URIs without one, and refuses to pick between two.
        let cli = Cli::parse_from(&[
            "x",
            "--password-file",
            &secret,
            "--uri",
            "amqp://u@h,amqp://v@i",
        ]);
        let brokers = cli.broker.to_options("test").expect("valid");
        assert!(brokers.iter().all(|b| b.password == "s3 cr:et"));
        let cli = Cli::parse_from(&["x", "--password-file", &secret, "--uri", "amqp://u:other@h"]);
        match cli.broker.to_options("test") {
            Err(Error::Config(message)) => {
                assert!(message.contains("holds a password"), "{message}");
                assert!(!message.contains("other"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from(&["x", "--password-file", &secret, "--password", "p"]).is_err()
        );
        let missing = dir.join("missing").display().to_string();
        for (path, why) in [
            (file("empty", b"\n"), "empty"),
            (missing, "No such file"),
            (dir.display().to_string(), "directory"),
            (file("binary", b"\xff\xfe"), "not UTF-8"),
        ] {
            let cli = Cli::parse_from(&["x", "--password-file", &path]);
            match cli.broker.to_options("test") {
                Err(Error::Config(message)) => {
                    assert!(message.contains(why), "{message}");
                    assert!(message.starts_with("--password-file '"), "{message}");
                }
                other => panic!("unexpected {other:?} for {path}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_flag_moves_the_default_port() {
        let cli = Cli::parse_from(&["x", "--tls", "--host", "h"]);
        let brokers = cli.broker.to_options("test").expect("valid");
        assert_eq!((brokers[0].port, brokers[0].tls), (DEFAULT_TLS_PORT, true));
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn flags_move_the_level() {
        let args = |verbose, quiet| LogArgs {
            verbose,
            quiet,
            ..LogArgs::default()
        };
        assert_eq!(args(0, 0).level(LevelFilter::Info), LevelFilter::Info);
        assert_eq!(args(1, 0).level(LevelFilter::Info), LevelFilter::Debug);
        assert_eq!(args(9, 0).level(LevelFilter::Info), LevelFilter::Trace);
        assert_eq!(args(0, 1).level(LevelFilter::Warn), LevelFilter::Error);
        assert_eq!(args(0, 9).level(LevelFilter::Warn), LevelFilter::Off);
    }

    #[test]
    fn generate_writes_man_and_completions() {
        use clap::CommandFactory;
        let mut man = Vec::new();
        Generate::Man
            .write(Cli::command().name("x"), &mut man)
            .expect("render");
        assert!(String::from_utf8_lossy(&man).contains("connect\\-timeout"));
        let mut bash = Vec::new();
        Generate::CompleteBash
            .write(Cli::command().name("x"), &mut bash)
            .expect("render");
        assert!(String::from_utf8_lossy(&bash).contains("--connect-timeout"));
    }
}
