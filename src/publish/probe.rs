//! `iscamd check`'s broker probe: one connection, as the daemon would make it, under a
//! client id of its own (the daemon's would end a running daemon's session).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet};

use super::mqtt::explain_error;
use crate::error::{Error, Result};
use crate::publish::config::MqttConfig;

/// How long the broker has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects once to `host` with the config's credentials and TLS, and says how it went.
pub fn probe(m: &MqttConfig, device: &str, host: &str) -> Result<String> {
    let mut options = super::options(m, device, host)?;
    options.set_client_id(format!("{}-check", super::client_id(m, device)));
    let (h, p) = options.broker_address();
    let failed = |reason: String| Error::invalid("broker", format!("{h}:{p}: {reason}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let (_client, mut eventloop) = AsyncClient::new(options.clone(), 4);
        match tokio::time::timeout(PROBE_TIMEOUT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                Ok(format!("{h}:{p} accepted the connection"))
            }
            Ok(Ok(other)) => Err(failed(format!("answered {other:?}"))),
            Ok(Err(e)) => Err(failed(explain_error(&e))),
            Err(_) => Err(failed(format!("no answer within {PROBE_TIMEOUT:?}"))),
        }
    })
}
