//! The broker from the environment, read as the binaries read it (see the crate docs).

use anyhow::{bail, Context as _, Result};
use rpc_client::BrokerOptions;

/// Seconds allowed for each TCP connect and AMQP handshake, so waits keep their deadlines.
const CONNECT_TIMEOUT_MS: u32 = 3000;

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The URIs of `AMQP_URI`, or one URI made of `AMQP_HOST`, `AMQP_PORT`, ... (`default_host`
/// when `AMQP_HOST` is unset).
fn uris(default_host: &str) -> Result<Vec<String>> {
    if let Some(list) = var("AMQP_URI") {
        let uris: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|uri| !uri.is_empty())
            .map(String::from)
            .collect();
        if uris.is_empty() {
            bail!("AMQP_URI holds no URI");
        }
        return Ok(uris);
    }
    let host = var("AMQP_HOST").unwrap_or_else(|| default_host.into());
    let port = var("AMQP_PORT").unwrap_or_else(|| "5672".into());
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("AMQP_PORT must be a port number, got '{port}'");
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        encode(&host)
    };
    Ok(vec![format!(
        "amqp://{}:{}@{host}:{port}/{}",
        encode(&var("AMQP_USER").unwrap_or_else(|| "guest".into())),
        encode(&std::env::var("AMQP_PASSWORD").unwrap_or_else(|_| "guest".into())),
        encode(&var("AMQP_VHOST").unwrap_or_else(|| "/".into())),
    )])
}

/// Every broker of the environment, each with a short connect timeout (unless its URI sets one).
pub fn from_env() -> Result<Vec<BrokerOptions>> {
    uris("localhost")?
        .iter()
        .map(|uri| {
            let uri = if uri.contains("connection_timeout=") {
                uri.clone()
            } else {
                let sep = if uri.contains('?') { '&' } else { '?' };
                format!("{uri}{sep}connection_timeout={CONNECT_TIMEOUT_MS}")
            };
            BrokerOptions::from_uri(&uri)
        })
        .collect()
}

/// Host, port and TLS of the first broker (`AMQP_HOST` defaults to 127.0.0.1, as in broker.sh).
pub fn address() -> Result<(String, u16, bool)> {
    let uris = uris("127.0.0.1")?;
    let broker = BrokerOptions::from_uri(&uris[0])?;
    Ok((broker.host, broker.port, broker.tls))
}

/// "PRODUCT VERSION (PLATFORM)" from the broker's connection.start properties.
pub fn version() -> Result<String> {
    let (connection, _) = rpc_client::connection::connect_first(&from_env()?, 0)
        .context("cannot connect to the broker")?;
    let property = |key: &str| match connection.server_properties().get(key) {
        Some(amiquip::AmqpValue::LongString(value)) => value.clone(),
        _ => "?".into(),
    };
    let text = format!(
        "{} {} ({})",
        property("product"),
        property("version"),
        property("platform")
    );
    let _ = connection.close();
    Ok(text)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_parts_round_trip_through_the_uri_parser() {
        let uri = format!(
            "amqp://{}:{}@h:1/{}",
            encode("al@ice"),
            encode("p:ss/w%rd"),
            encode("/")
        );
        let broker = BrokerOptions::from_uri(&uri).expect("valid");
        assert_eq!(broker.user, "al@ice");
        assert_eq!(broker.vhost, "/");
        assert!(!broker.display_uri().contains("ss/w"));
    }
}
