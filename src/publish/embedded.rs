//! The zero-setup broker: when no `[mqtt] host` is configured, iscamd runs rumqttd in
//! process on 127.0.0.1:1883 so that `iscamd run` works on a fresh machine and any MQTT
//! client can watch it. Production configs point at an external broker instead.
//!
//! It listens on loopback only. With `[mqtt] username` set, every client must log in with
//! those credentials, and the daemon's own client id is reserved to the daemon (which
//! logs in with a password made at start), so that no other client can take its session
//! over. rumqttd has no ACLs: a client that may log in may read and publish every topic.

use std::net::{SocketAddr, TcpListener};

use crate::error::{Error, Result};

/// Where the embedded broker listens.
pub const ADDRESS: &str = "127.0.0.1:1883";

/// Who may connect when the broker asks for a login.
pub struct Access {
    /// The credentials every other client must give.
    pub username: String,
    pub password: String,
    /// The daemon's client id, which only the daemon may use.
    pub daemon_client_id: String,
}

/// Starts the broker on its own threads, listening on `addr` (loopback only). With
/// `access`, returns the login the daemon's own client must use.
pub fn start(
    addr: SocketAddr,
    max_payload_size: usize,
    access: Option<Access>,
) -> Result<Option<(String, String)>> {
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
    let mut config: rumqttd::Config = toml::from_str(&text)
        .map_err(|e| Error::invalid("embedded broker config", e.to_string()))?;
    let server = config.v4.as_mut().and_then(|v4| v4.get_mut("1"));
    let server = server.expect("the config above has [v4.1]");
    let daemon_login = access.map(|access| require_login(&mut server.connections, access));
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
    let login = if daemon_login.is_some() {
        " -u <user> -P <password>"
    } else {
        ""
    };
    tracing::info!(
        "embedded MQTT broker listening on {addr} (watch it with: mosquitto_sub -h {} -p {}{login} -t 'iscamd/#' -v)",
        addr.ip(),
        addr.port()
    );
    Ok(daemon_login)
}

/// Makes every client log in with `access`'s credentials, except the daemon's client id,
/// which needs a password made now; returns the daemon's login.
fn require_login(
    connections: &mut rumqttd::ConnectionSettings,
    access: Access,
) -> (String, String) {
    let daemon_login = (
        access.username.clone(),
        format!("{:032x}", rand::random::<u128>()),
    );
    let allowed = daemon_login.clone();
    connections.set_auth_handler(move |client_id: String, user: String, password: String| {
        let ok = if client_id == access.daemon_client_id {
            (user, password) == allowed
        } else {
            user == access.username && password == access.password
        };
        async move { ok }
    });
    daemon_login
}
