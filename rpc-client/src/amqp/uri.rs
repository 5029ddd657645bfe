//! Where the broker is and how to log in: [`BrokerOptions`], `amqp://` URIs and password
//! masking.
//!
//! [`BrokerOptions`] is what [`open_first`](super::open_first) needs; the command-line flags that
//! fill it are in `rpc_client::cli` (feature `cli`). Anything that prints a broker address prints
//! [`BrokerOptions::display_uri`] or [`mask_uri`], never the password.

use std::fmt;
use std::time::Duration;

/// The RabbitMQ default AMQP port.
pub(crate) const DEFAULT_PORT: u16 = 5672;

/// The RabbitMQ default AMQP-over-TLS port.
pub(crate) const DEFAULT_TLS_PORT: u16 = 5671;

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
    pub fn from_uri(uri: &str) -> Result<BrokerOptions, UriError> {
        parse_uri(uri).map_err(|problem| UriError {
            uri: mask_uri(uri),
            problem,
        })
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

fn parse_uri(uri: &str) -> Result<BrokerOptions, UriProblem> {
    use UriProblem as P;
    let mut options = BrokerOptions::default();
    let rest = if let Some(rest) = uri.strip_prefix("amqp://") {
        rest
    } else if let Some(rest) = uri.strip_prefix("amqps://") {
        options.tls = true;
        options.port = DEFAULT_TLS_PORT;
        rest
    } else {
        return Err(P::Scheme);
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
            options.user = percent_decode(user, "user name")?;
            if let Some(password) = password {
                options.password = percent_decode(password, "password")?;
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(P::UnclosedBracket)?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(P::AfterBracket),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if !host.is_empty() {
        options.host = percent_decode(host, "host")?;
    }
    if let Some(port) = port {
        options.port = port.parse().map_err(|_| P::Port(port.to_string()))?;
    }
    if let Some(path) = path {
        if !path.is_empty() {
            options.vhost = percent_decode(path, "vhost")?;
        }
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || P::Parameter {
            name: key.to_string(),
            value: value.to_string(),
        };
        match key {
            "heartbeat" => options.heartbeat = value.parse().map_err(|_| bad())?,
            "connection_timeout" => {
                let ms: u64 = value.parse().map_err(|_| bad())?;
                options.connect_timeout = Duration::from_millis(ms);
            }
            other => return Err(P::UnknownParameter(other.to_string())),
        }
    }
    Ok(options)
}

/// A broker URI that cannot be used: the URI (password masked) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    /// The URI as given, with its password masked.
    pub uri: String,
    /// What is wrong with it.
    pub problem: UriProblem,
}

/// What is wrong with a broker URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriProblem {
    /// Neither `amqp://` nor `amqps://`.
    Scheme,
    /// A `%` not followed by two hex digits, in the named part.
    Percent(&'static str),
    /// The named part is not UTF-8 once percent-decoded.
    NotUtf8(&'static str),
    /// `[` without `]` around an IPv6 host.
    UnclosedBracket,
    /// Something other than `:PORT` after `]`.
    AfterBracket,
    /// Not a port number.
    Port(String),
    /// A known query parameter with a bad value.
    Parameter {
        /// The parameter.
        name: String,
        /// Its value.
        value: String,
    },
    /// A query parameter we do not support.
    UnknownParameter(String),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid broker URI '{}': ", self.uri)?;
        match &self.problem {
            UriProblem::Scheme => f.write_str("expected a URI starting with amqp:// or amqps://"),
            UriProblem::Percent(part) => {
                write!(f, "bad {part}: '%' must be followed by two hex digits")
            }
            UriProblem::NotUtf8(part) => write!(f, "bad {part}: percent-decoded text is not UTF-8"),
            UriProblem::UnclosedBracket => f.write_str("unclosed '[' in IPv6 host"),
            UriProblem::AfterBracket => f.write_str("unexpected text after ']'"),
            UriProblem::Port(port) => write!(f, "bad port '{port}'"),
            UriProblem::Parameter { name, value } => write!(f, "bad {name} '{value}'"),
            UriProblem::UnknownParameter(name) => write!(f, "unsupported URI parameter '{name}'"),
        }
    }
}

impl std::error::Error for UriError {}

/// Returns `uri` with the password of its user-info replaced by `****`.
///
/// Works on any `scheme://user:password@host…` string, valid or not, so it is safe to use on
/// user input before it has been parsed.
pub fn mask_uri(uri: &str) -> String {
    match password_span(uri) {
        Some(span) => format!("{}****{}", &uri[..span.start], &uri[span.end..]),
        None => uri.to_string(),
    }
}

/// Whether `uri` holds a password (`scheme://user:password@…`, an empty one included), valid
/// URI or not.
#[cfg(feature = "cli")]
pub(crate) fn has_password(uri: &str) -> bool {
    password_span(uri).is_some()
}

/// Where the password of `scheme://user:password@host…` is in `uri`.
fn password_span(uri: &str) -> Option<std::ops::Range<usize>> {
    let authority_start = uri.find("://")? + 3;
    let authority_end = uri[authority_start..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |i| authority_start + i);
    let authority = &uri[authority_start..authority_end];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some(authority_start + colon + 1..authority_start + at)
}

fn percent_decode(text: &str, part: &'static str) -> Result<String, UriProblem> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(UriProblem::Percent(part))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriProblem::NotUtf8(part))
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
        assert_eq!(mask_uri("amqp://u:@h"), "amqp://u:****@h");
    }

    #[test]
    #[cfg(feature = "cli")]
    fn has_password_sees_only_the_user_info() {
        assert!(has_password("amqp://u:p@h/v"));
        assert!(has_password("amqp://u:@h"));
        assert!(!has_password("amqp://u@h:5672/v"));
        assert!(!has_password("amqp://h/a:b@c"));
        assert!(!has_password("amqp://h:5672"));
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
}
