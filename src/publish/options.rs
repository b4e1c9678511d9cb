//! The MQTT client's options: broker, credentials, TLS material and the last will.

use rumqttc::{MqttOptions, Transport};

use super::Topics;
use crate::error::Result;
use crate::file::{read_text, MAX_SMALL_FILE_BYTES};
use crate::publish::config::MqttConfig;

/// The daemon's MQTT client id: `[mqtt] client_id`, default `iscamd-<device>`.
pub fn client_id(m: &MqttConfig, device: &str) -> String {
    m.client_id
        .clone()
        .unwrap_or_else(|| format!("iscamd-{device}"))
}

/// `[mqtt] username` with the password from `password_file` (empty without one).
pub fn credentials(m: &MqttConfig) -> Result<Option<(String, String)>> {
    let Some(user) = &m.username else {
        return Ok(None);
    };
    let password = match &m.password_file {
        Some(p) => {
            warn_if_world_readable(p);
            read_text(p, "mqtt.password_file", MAX_SMALL_FILE_BYTES)?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        }
        None => String::new(),
    };
    Ok(Some((user.clone(), password)))
}

/// The MQTT client options the config describes (credentials and certificates read now).
pub fn options(m: &MqttConfig, device: &str, host: &str) -> Result<MqttOptions> {
    let port = m.port.unwrap_or(if m.ca.is_some() { 8883 } else { 1883 });
    let mut options = MqttOptions::new(client_id(m, device), host, port);
    options.set_keep_alive(m.keep_alive);
    options.set_max_packet_size(m.max_packet_size, m.max_packet_size);
    options.set_clean_session(true);
    let topics = Topics::new(&m.prefix, device);
    options.set_last_will(rumqttc::LastWill::new(
        topics.availability(),
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    if let Some((user, password)) = credentials(m)? {
        options.set_credentials(user, password);
    }
    if let Some(ca) = &m.ca {
        let client = m.cert.as_deref().zip(m.key.as_deref());
        let config = super::tls::client_config(ca, client)?;
        options.set_transport(Transport::tls_with_config(config.into()));
    }
    Ok(options)
}

fn warn_if_world_readable(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                tracing::warn!(
                    "{} is readable by every user: chmod 600 it (it holds the MQTT password)",
                    path.display()
                );
            }
        }
    }
}
