//! Where the broker is and how to log in: command-line flags, `amqp://` URIs and password masking.
//!
//! Both binaries take the same broker flags ([`BrokerArgs`]); they resolve to one
//! [`BrokerOptions`], which is what [`crate::connection::connect`] needs. Anything that prints a
//! broker address prints [`BrokerOptions::display_uri`] or [`mask_uri`], never the password.

use anyhow::{bail, Context as _};
use std::fmt;
use std::time::Duration;

/// The RabbitMQ default AMQP port.
pub const DEFAULT_PORT: u16 = 5672;

/// The RabbitMQ default AMQP-over-TLS port.
pub const DEFAULT_TLS_PORT: u16 = 5671;

/// Broker flags shared by `rpc-server` and `rpc-client` (flatten into a clap parser).
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker URI, amqp[s]://USER:PASSWORD@HOST:PORT/VHOST; replaces the five flags below.
    /// Repeat it (or separate URIs with commas) to list the nodes of a cluster: the first
    /// that answers is used, and the next one after a connection loss.
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

    /// Password (prefer the AMQP_PASSWORD variable: flags show up in `ps`).
    #[arg(
        long,
        env = "AMQP_PASSWORD",
        hide_env_values = true,
        default_value = "guest",
        hide_default_value = true
    )]
    pub password: String,

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
    /// Resolves the flags (or the URIs) into the list of brokers to try, in order.
    pub fn to_options(&self) -> anyhow::Result<Vec<BrokerOptions>> {
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
                password: self.password.clone(),
                tls: self.tls,
                ..BrokerOptions::default()
            }]
        } else {
            self.uri
                .iter()
                .map(|uri| uri.trim())
                .filter(|uri| !uri.is_empty())
                .map(BrokerOptions::from_uri)
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        if brokers.is_empty() {
            bail!("--uri / AMQP_URI holds no URI");
        }
        if let Some(path) = &self.tls_ca {
            // Fail at start-up, not at every connection attempt.
            crate::connection::load_ca(path).map_err(anyhow::Error::msg)?;
        }
        for options in &mut brokers {
            options.connect_timeout = self.connect_timeout;
            options.tls_ca.clone_from(&self.tls_ca);
            if options.tls_ca.is_some() && !options.tls {
                bail!("--tls-ca needs TLS: use an amqps:// URI or --tls");
            }
            if options.host.is_empty() {
                bail!("the broker host is empty");
            }
        }
        if self.shuffle {
            shuffle(&mut brokers);
        }
        Ok(brokers)
    }
}

/// Fisher-Yates with the standard library's randomly seeded hasher as the source.
fn shuffle<T>(items: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for i in (1..items.len()).rev() {
        let mut hasher = state.build_hasher();
        hasher.write_usize(i);
        let j = (hasher.finish() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The masked URIs of `brokers`, comma-separated, for messages.
pub fn display_list(brokers: &[BrokerOptions]) -> String {
    brokers
        .iter()
        .map(BrokerOptions::display_uri)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything needed to open an AMQP connection.
///
/// `Debug` and `Display` mask the password, so logging the options is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerOptions {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Virtual host, `/` by default.
    pub vhost: String,
    /// User name for PLAIN authentication.
    pub user: String,
    /// Password for PLAIN authentication.
    pub password: String,
    /// Limit on the TCP connect and on the AMQP handshake, each.
    pub connect_timeout: Duration,
    /// AMQP heartbeat interval in seconds (0 turns heartbeats off).
    pub heartbeat: u16,
    /// Connect with TLS (`amqps://`), checking the broker's certificate and name.
    pub tls: bool,
    /// Extra CA certificates (PEM) to trust for TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Shown by the broker as the connection's `information` client property
    /// (`rabbitmqctl list_connections client_properties`), so operators can tell who is who.
    pub client_name: String,
}

impl Default for BrokerOptions {
    /// `amqp://guest:guest@localhost:5672/`, 10 s connect timeout, 10 s heartbeat (a dead
    /// connection is noticed within about 20 s).
    fn default() -> Self {
        BrokerOptions {
            host: "localhost".into(),
            port: DEFAULT_PORT,
            vhost: "/".into(),
            user: "guest".into(),
            password: "guest".into(),
            connect_timeout: Duration::from_secs(10),
            heartbeat: 10,
            tls: false,
            tls_ca: None,
            client_name: format!("rabbit-rpc {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl BrokerOptions {
    /// Parses an `amqp://user:password@host:port/vhost` URI (RabbitMQ's URI spec).
    ///
    /// Missing parts take the defaults of [`BrokerOptions::default`]; user, password and vhost
    /// are percent-decoded (`/%2F` and an empty path both mean the vhost `/`). The query
    /// parameters `heartbeat` (seconds) and `connection_timeout` (milliseconds) are understood.
    /// `amqps://` selects TLS and the default port 5671.
    pub fn from_uri(uri: &str) -> anyhow::Result<BrokerOptions> {
        parse_uri(uri).with_context(|| format!("invalid broker URI '{}'", mask_uri(uri)))
    }

    /// The options as a URI with the password masked, for logs and error messages.
    pub fn display_uri(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{}:****@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            percent_encode(&self.user),
            host,
            self.port,
            percent_encode(&self.vhost)
        )
    }
}

impl fmt::Display for BrokerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_uri())
    }
}

impl fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("uri", &self.display_uri())
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_ca", &self.tls_ca)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

fn parse_uri(uri: &str) -> anyhow::Result<BrokerOptions> {
    let mut options = BrokerOptions::default();
    let rest = if let Some(rest) = uri.strip_prefix("amqp://") {
        rest
    } else if let Some(rest) = uri.strip_prefix("amqps://") {
        options.tls = true;
        options.port = DEFAULT_TLS_PORT;
        rest
    } else {
        bail!("expected a URI starting with amqp:// or amqps://");
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            options.user = percent_decode(user).context("bad user name")?;
            if let Some(password) = password {
                options.password = percent_decode(password).context("bad password")?;
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .context("unclosed '[' in IPv6 host")?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => bail!("unexpected text after ']'"),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if !host.is_empty() {
        options.host = percent_decode(host).context("bad host")?;
    }
    if let Some(port) = port {
        options.port = port.parse().with_context(|| format!("bad port '{port}'"))?;
    }
    if let Some(path) = path {
        if !path.is_empty() {
            options.vhost = percent_decode(path).context("bad vhost")?;
        }
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "heartbeat" => {
                options.heartbeat = value
                    .parse()
                    .with_context(|| format!("bad heartbeat '{value}'"))?;
            }
            "connection_timeout" => {
                let ms: u64 = value
                    .parse()
                    .with_context(|| format!("bad connection_timeout '{value}'"))?;
                options.connect_timeout = Duration::from_millis(ms);
            }
            other => bail!("unsupported URI parameter '{other}'"),
        }
    }
    Ok(options)
}

/// Returns `uri` with the password of its user-info replaced by `****`.
///
/// Works on any `scheme://user:password@host…` string, valid or not, so it is safe to use on
/// user input before it has been parsed.
pub fn mask_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = uri[authority_start..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |i| authority_start + i);
    let authority = &uri[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return uri.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return uri.to_string();
    };
    format!(
        "{}{}:****{}",
        &uri[..authority_start],
        &userinfo[..colon],
        &uri[authority_start + at..]
    )
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

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .context("'%' must be followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("percent-decoded text is not UTF-8")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri_parses_and_decodes() {
        let o = BrokerOptions::from_uri("amqp://al%40ice:p%3Ass@rabbit.example:5673/my%2Fvhost")
            .expect("valid");
        assert_eq!(o.user, "al@ice");
        assert_eq!(o.password, "p:ss");
        assert_eq!(o.host, "rabbit.example");
        assert_eq!(o.port, 5673);
        assert_eq!(o.vhost, "my/vhost");
    }

    #[test]
    fn short_uris_take_defaults() {
        let o = BrokerOptions::from_uri("amqp://").expect("valid");
        assert_eq!(o, BrokerOptions::default());
        let o = BrokerOptions::from_uri("amqp://h/%2F").expect("valid");
        assert_eq!((o.host.as_str(), o.vhost.as_str()), ("h", "/"));
        let o = BrokerOptions::from_uri("amqp://[::1]:5680").expect("valid");
        assert_eq!((o.host.as_str(), o.port), ("::1", 5680));
    }

    #[test]
    fn amqps_selects_tls_and_port_5671() {
        let o = BrokerOptions::from_uri("amqps://u:p@rabbit.example/v").expect("valid");
        assert!(o.tls);
        assert_eq!(o.port, 5671);
        assert_eq!(o.display_uri(), "amqps://u:****@rabbit.example:5671/v");
        let o = BrokerOptions::from_uri("amqps://h:5999").expect("valid");
        assert_eq!(o.port, 5999);
        assert!(!BrokerOptions::from_uri("amqp://h").expect("valid").tls);
    }

    #[test]
    fn query_parameters() {
        let o =
            BrokerOptions::from_uri("amqp://h?heartbeat=5&connection_timeout=2500").expect("valid");
        assert_eq!(o.heartbeat, 5);
        assert_eq!(o.connect_timeout, Duration::from_millis(2500));
        assert!(BrokerOptions::from_uri("amqp://h?frame_max=1").is_err());
    }

    #[test]
    fn bad_uris_are_refused_without_leaking_the_password() {
        for uri in [
            "http://u:secret@h",
            "amqp://u:secret@h:notaport",
            "amqp://u:secret@h:99999",
            "amqp://u:secret@[::1",
            "amqp://u:secret%zz@h",
        ] {
            let err = BrokerOptions::from_uri(uri).expect_err(uri);
            let text = format!("{err:#}");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn mask_uri_hides_only_the_password() {
        assert_eq!(
            mask_uri("amqp://guest:guest@localhost:5672/%2F"),
            "amqp://guest:****@localhost:5672/%2F"
        );
        assert_eq!(mask_uri("amqp://u:p@ss@h/v"), "amqp://u:****@h/v");
        assert_eq!(mask_uri("amqp://user@h/v"), "amqp://user@h/v");
        assert_eq!(mask_uri("amqp://h/a:b@c"), "amqp://h/a:b@c");
        assert_eq!(mask_uri("not a uri"), "not a uri");
    }

    #[test]
    fn display_and_debug_mask_the_password() {
        let o = BrokerOptions {
            password: "hunter2".into(),
            ..BrokerOptions::default()
        };
        assert_eq!(o.to_string(), "amqp://guest:****@localhost:5672/%2F");
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn shuffle_keeps_every_item() {
        let mut items: Vec<u32> = (0..50).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn several_uris() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            broker: BrokerArgs,
        }
        let cli = Cli::parse_from(["x", "--uri", "amqp://a:1,amqp://b:2", "--uri", "amqps://c"]);
        let brokers = cli.broker.to_options().expect("valid");
        let hosts: Vec<_> = brokers.iter().map(|b| (b.host.as_str(), b.port)).collect();
        assert_eq!(hosts, [("a", 1), ("b", 2), ("c", 5671)]);
        assert!(Cli::try_parse_from(["x", "--uri", "amqp://a", "--host", "b"]).is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
