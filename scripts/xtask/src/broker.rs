//! The broker: its address, whether it answers AMQP, what it announces.

use anyhow::{bail, Context as _, Result};
use rpc_client::BrokerOptions;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// "PRODUCT VERSION (PLATFORM)" from the broker's connection.start properties.
pub fn version(brokers: &[BrokerOptions]) -> Result<String> {
    let (connection, _) =
        rpc_client::amqp::connect_first(brokers, 0).context("cannot connect to the broker")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1") && is_local("localhost"));
        assert!(!is_local("192.0.2.1"));
    }
}
