//! The zero-setup broker: when no `[mqtt] host` is configured, iscamd runs rumqttd in
//! process on 127.0.0.1:1883 so that `iscamd run` works on a fresh machine and any MQTT
//! client can watch it. Production configs point at an external broker instead.

use std::net::{SocketAddr, TcpListener};

use crate::error::{Error, Result};

/// Where the embedded broker listens.
pub const ADDRESS: &str = "127.0.0.1:1883";

/// Starts the broker on its own threads, listening on `addr` (loopback only).
pub fn start(addr: SocketAddr, max_payload_size: usize) -> Result<()> {
    // rumqttd reports a busy port only in its logs: check first, with a useful message.
    TcpListener::bind(addr).map_err(|e| {
        Error::invalid(
            "mqtt.host",
            format!("cannot start the embedded broker on {addr}: {e} (is another broker running there? then set [mqtt] host = \"127.0.0.1\")"),
        )
    })?;
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "iscamd-embedded"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload_size}
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text)
        .map_err(|e| Error::invalid("embedded broker config", e.to_string()))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("iscamd-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| Error::invalid("thread", e))?;
    crate::publish::wait_listening(addr);
    tracing::info!("embedded MQTT broker listening on {addr} (watch it with: mosquitto_sub -h {} -p {} -t 'iscamd/#' -v)", addr.ip(), addr.port());
    Ok(())
}
