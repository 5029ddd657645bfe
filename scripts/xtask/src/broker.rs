//! The broker from the environment, read as the binaries read it (see the crate docs).

use anyhow::{bail, Context as _, Result};
use rpc_client::BrokerOptions;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

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
            Ok(BrokerOptions::from_uri(&uri)?)
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
    let (connection, _) =
        rpc_client::amqp::connect_first(&from_env()?, 0).context("cannot connect to the broker")?;
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

/// Is `host` an address of this machine? (Loopback, or an address a socket can bind to.)
pub fn is_local(host: &str) -> bool {
    (host, 0).to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|addr| {
            addr.ip().is_loopback()
                || addr.ip().is_unspecified()
                || UdpSocket::bind((addr.ip(), 0)).is_ok()
        })
    })
}

/// Connects to `host:port` within `timeout` and, with `amqp`, checks that it answers the
/// AMQP 0-9-1 protocol header with a Connection.Start frame (type 1, channel 0, class 10,
/// method 10) within `timeout` more.
pub fn probe(host: &str, port: u16, amqp: bool, timeout: Duration) -> Result<()> {
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve '{host}'"))?
        .next()
        .with_context(|| format!("'{host}' has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{host}:{port} does not accept connections"))?;
    if !amqp {
        return Ok(());
    }
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"AMQP\x00\x00\x09\x01")?;
    let mut frame = [0u8; 11];
    stream
        .read_exact(&mut frame)
        .with_context(|| format!("{host}:{port} does not answer AMQP"))?;
    if frame[0] != 1 || frame[1..3] != [0, 0] || frame[7..11] != [0, 10, 0, 10] {
        bail!("{host}:{port} does not answer with AMQP 0-9-1 Connection.Start");
    }
    Ok(())
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

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1") && is_local("localhost"));
        assert!(!is_local("192.0.2.1"));
    }
}
