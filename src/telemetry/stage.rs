//! The stats stage: publishes the counters on `<prefix>/<device>/stats` every
//! `[mqtt] stats_interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Sender;

use super::Stats;
use crate::daemon::shutdown::Shutdown;
use crate::error::{Error, Result};
use crate::publish::payload::Origin;
use crate::publish::{Kind, Message, Topics};

pub struct StatsPublisher {
    pub stats: Arc<Stats>,
    pub publish: Sender<Message>,
    pub topics: Topics,
    pub origin: Origin,
    pub every: Duration,
}

impl StatsPublisher {
    pub async fn run(self, mut shutdown: Shutdown) -> Result<()> {
        // A zero interval would spin; the config refuses it, this guards the library use.
        let mut tick = tokio::time::interval(self.every.max(Duration::from_millis(100)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return Ok(()),
            }
            let snapshot = self.stats.snapshot(&self.origin);
            let payload = serde_json::to_vec(&snapshot).expect("stats serialise");
            let message = Message {
                topic: self.topics.stats(),
                payload,
                qos: 0,
                retain: true,
                kind: Kind::Stats,
            };
            if self.publish.send(message).await.is_err() {
                return Err(Error::Stage("the MQTT connection stage is gone".into()));
            }
        }
    }
}
