//! `iscamd run --remove-discovery`: empties every retained topic a device leaves on the
//! broker, so that a decommissioned camera leaves no device behind in Home Assistant.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};

use super::mqtt::explain_error;
use super::{discovery, Message, Topics};
use crate::config::Config;
use crate::error::{Error, Result};

/// How long the broker has to take every message.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The retained topics of `device`: both discovery formats, availability, run and the
/// heatmap image, the event snapshot and settings.
fn retained_topics(config: &Config, device: &str) -> Vec<Message> {
    let topics = Topics::new(&config.mqtt.prefix, device);
    let mut messages = discovery::removal(&config.homeassistant.prefix, device, &topics);
    for topic in [
        topics.availability(),
        topics.run(),
        topics.heatmap_image(),
        topics.heatmap_info(),
        topics.event_snapshot(),
        topics.settings(),
    ] {
        messages.push(Message {
            topic,
            payload: Vec::new(),
            qos: 1,
            retain: true,
            kind: super::Kind::Discovery,
        });
    }
    messages
}

/// Publishes the empty retained messages to the configured broker and says what it did.
pub fn remove_discovery(config: &Config) -> Result<String> {
    let device = config.device_id();
    let Some(host) = config.mqtt.host.as_deref() else {
        return Ok(
            "no [mqtt] host: the embedded broker keeps no retained message once the \
                   daemon stops, so there is nothing to remove"
                .into(),
        );
    };
    let mut options = super::options(&config.mqtt, &device, host)?;
    options.set_client_id(format!(
        "{}-remove",
        super::client_id(&config.mqtt, &device)
    ));
    let (h, p) = options.broker_address();
    let failed = |reason: String| Error::invalid("broker", format!("{h}:{p}: {reason}"));
    let messages = retained_topics(config, &device);
    let count = messages.len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), count + 2);
        for m in messages {
            client
                .publish(m.topic, QoS::AtLeastOnce, true, m.payload)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while acked < count {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(failed(explain_error(&e))),
                Err(_) => {
                    return Err(failed(format!(
                        "{acked} of {count} removals acknowledged within {TIMEOUT:?}"
                    )))
                }
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
        Ok(format!(
            "{h}:{p}: removed the Home Assistant discovery, availability, run and heatmap \
             image of device {device} ({count} retained topics emptied)"
        ))
    })
}
