//! The connection task: owns the rumqttc event loop, reconnects with exponential backoff
//! and jitter, and keeps QoS-1 messages in a bounded outbox through outages.
//!
//! rumqttc alone would lose them: on reconnect without a resumed session it clears the
//! requests it was holding. So every message handed to rumqttc is tracked until the broker
//! acknowledges it (QoS 1) or it is written (QoS 0); on a disconnect the unacknowledged
//! ones go back to the front of the outbox, in order, and rumqttc's copies are dropped.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS,
};
use tokio::sync::{mpsc, watch};

use super::{discovery, Kind, Message, Topics};
use crate::stats::Stats;

/// Messages handed to rumqttc and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 64;

/// What the connection passes back to the daemon.
#[derive(Debug)]
pub enum Incoming {
    /// A payload received on the command topic.
    Command(Vec<u8>),
}

/// Everything the connection task needs.
pub struct ConnectionSettings {
    pub options: MqttOptions,
    pub topics: Topics,
    pub device: String,
    pub outbox: usize,
    /// Home Assistant discovery prefix, when discovery is on.
    pub discovery_prefix: Option<String>,
    pub shutdown_timeout: Duration,
}

struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The next delay with ±20 % jitter, doubling up to 30 s.
    fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0.8..1.2);
        let d = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

struct Connection {
    client: AsyncClient,
    settings: ConnectionSettings,
    stats: Arc<Stats>,
    connected: bool,
    ever_connected: bool,
    outbox: VecDeque<Message>,
    /// Handed to rumqttc, waiting for its `Outgoing::Publish` (in order).
    handed: VecDeque<Message>,
    /// Written with QoS 1, waiting for the broker's PUBACK, by packet id.
    unacked: VecDeque<(u16, Message)>,
}

/// Runs until `shutdown` turns true and the outbox is flushed (or the shutdown timeout
/// passes), then publishes `offline` and disconnects.
pub async fn run_connection(
    settings: ConnectionSettings,
    mut messages: mpsc::Receiver<Message>,
    incoming: mpsc::Sender<Incoming>,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (client, mut eventloop) =
        AsyncClient::new(settings.options.clone(), MAX_IN_FLIGHT * 2 + 16);
    let mut conn = Connection {
        client,
        settings,
        stats,
        connected: false,
        ever_connected: false,
        outbox: VecDeque::new(),
        handed: VecDeque::new(),
        unacked: VecDeque::new(),
    };
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(event) => {
                    if conn.on_event(event, &incoming).await {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    conn.on_disconnect(&mut eventloop, &e, delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            },
            message = messages.recv() => match message {
                Some(m) => conn.submit(m),
                None => break,
            },
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        conn.drain();
    }
    conn.shut_down(&mut eventloop, &mut messages).await;
}

impl Connection {
    /// Handles one event; true when a connection was (re)established.
    async fn on_event(&mut self, event: Event, incoming: &mpsc::Sender<Incoming>) -> bool {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                if self.ever_connected {
                    self.stats.reconnects.fetch_add(1, Relaxed);
                    tracing::info!(
                        "reconnected to the broker; {} message(s) waiting in the outbox",
                        self.outbox.len()
                    );
                } else {
                    tracing::info!("connected to the broker");
                }
                self.connected = true;
                self.ever_connected = true;
                self.stats.connected.store(true, Relaxed);
                let t = &self.settings.topics;
                let subs = [
                    t.command(),
                    self.settings
                        .discovery_prefix
                        .as_ref()
                        .map(|p| format!("{p}/status"))
                        .unwrap_or_default(),
                ];
                for topic in subs.into_iter().filter(|t| !t.is_empty()) {
                    if let Err(e) = self.client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::warn!("cannot subscribe to {topic}: {e}");
                    }
                }
                self.announce();
                return true;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(m) = self.handed.pop_front() {
                    if m.qos > 0 {
                        self.unacked.push_back((pkid, m));
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(i) = self.unacked.iter().position(|(p, _)| *p == ack.pkid) {
                    self.unacked.remove(i);
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                if p.topic == self.settings.topics.command() {
                    self.stats.commands.fetch_add(1, Relaxed);
                    if p.retain {
                        // A retained command would run again at every reconnect.
                        self.stats.commands_rejected.fetch_add(1, Relaxed);
                        tracing::warn!(
                            "ignoring a retained command on {}: commands act once; clear it with \
                             `mosquitto_pub -r -n -t {}`",
                            p.topic,
                            p.topic
                        );
                    } else if incoming
                        .try_send(Incoming::Command(p.payload.to_vec()))
                        .is_err()
                    {
                        self.stats.commands_rejected.fetch_add(1, Relaxed);
                        tracing::warn!("command dropped: the daemon is busy with earlier commands");
                    }
                } else if p.payload.as_ref() == b"online" {
                    tracing::info!("Home Assistant came online: sending discovery again");
                    self.announce();
                }
            }
            _ => {}
        }
        false
    }

    /// Availability `online` and discovery, first in line.
    fn announce(&mut self) {
        let first = announcements(
            &self.settings.topics,
            &self.settings.device,
            self.settings.discovery_prefix.as_deref(),
        );
        for m in first.into_iter().rev() {
            self.outbox.push_front(m);
        }
    }

    fn on_disconnect(&mut self, eventloop: &mut EventLoop, e: &ConnectionError, delay: Duration) {
        let broker = self.settings.options.broker_address();
        let reason = explain_error(e);
        if self.connected {
            tracing::warn!(
                "lost the broker {}:{}: {reason}; reconnecting in {:.1}s",
                broker.0,
                broker.1,
                delay.as_secs_f64()
            );
        } else {
            tracing::warn!(
                "cannot connect to the broker {}:{}: {reason}; retrying in {:.1}s",
                broker.0,
                broker.1,
                delay.as_secs_f64()
            );
        }
        self.connected = false;
        self.stats.connected.store(false, Relaxed);
        // Take back everything rumqttc holds: it would drop it on a fresh session, or
        // replay it on a resumed one after messages we queue now.
        eventloop.pending.clear();
        let back: Vec<Message> = self
            .unacked
            .drain(..)
            .map(|(_, m)| m)
            .chain(self.handed.drain(..))
            .collect();
        for m in back.into_iter().rev() {
            if keep_offline(&m) {
                self.outbox.push_front(m);
            }
        }
        self.outbox.retain(keep_offline);
        self.trim();
    }

    /// Queues a message; it leaves when connected and in order.
    fn submit(&mut self, m: Message) {
        if !self.connected && !keep_offline(&m) {
            self.stats.messages_dropped_offline.fetch_add(1, Relaxed);
            return;
        }
        self.outbox.push_back(m);
        self.trim();
        self.drain();
    }

    /// Drops the oldest messages beyond the outbox size.
    fn trim(&mut self) {
        while self.outbox.len() > self.settings.outbox {
            self.outbox.pop_front();
            self.stats.outbox_dropped.fetch_add(1, Relaxed);
        }
        self.stats
            .outbox_len
            .store(self.outbox.len() as u64, Relaxed);
    }

    /// Hands queued messages to rumqttc while connected and within the in-flight bound.
    fn drain(&mut self) {
        while self.connected && self.handed.len() + self.unacked.len() < MAX_IN_FLIGHT {
            let Some(m) = self.outbox.pop_front() else {
                break;
            };
            let qos = if m.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            match self
                .client
                .try_publish(m.topic.clone(), qos, m.retain, m.payload.clone())
            {
                Ok(()) => self.handed.push_back(m),
                Err(_) => {
                    self.outbox.push_front(m);
                    break;
                }
            }
        }
        self.stats
            .outbox_len
            .store(self.outbox.len() as u64, Relaxed);
    }

    /// Flushes for up to the shutdown timeout, then `offline` and a clean disconnect.
    async fn shut_down(
        &mut self,
        eventloop: &mut EventLoop,
        messages: &mut mpsc::Receiver<Message>,
    ) {
        while let Ok(m) = messages.try_recv() {
            self.submit(m);
        }
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        while self.connected
            && !(self.outbox.is_empty() && self.handed.is_empty() && self.unacked.is_empty())
        {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(event)) => {
                    let (tx, _rx) = mpsc::channel(1);
                    self.on_event(event, &tx).await;
                    self.drain();
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let left = self.outbox.len() + self.handed.len() + self.unacked.len();
        if left > 0 {
            tracing::warn!("shutting down with {left} message(s) undelivered");
        }
        if !self.connected {
            return;
        }
        let offline = self.client.try_publish(
            self.settings.topics.availability(),
            QoS::AtLeastOnce,
            true,
            b"offline".to_vec(),
        );
        let disconnect = self.client.try_disconnect();
        if offline.is_err() || disconnect.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
        tracing::info!("disconnected from the broker");
    }
}

/// Availability `online` (retained) and, with a discovery prefix, Home Assistant discovery.
pub fn announcements(
    topics: &Topics,
    device: &str,
    discovery_prefix: Option<&str>,
) -> Vec<Message> {
    let mut messages = vec![Message {
        topic: topics.availability(),
        payload: b"online".to_vec(),
        qos: 1,
        retain: true,
        kind: Kind::Availability,
    }];
    if let Some(prefix) = discovery_prefix {
        messages.extend(discovery::messages(prefix, device, topics));
    }
    messages
}

/// Messages worth keeping through an outage: QoS ≥ 1 data and command results. A stale
/// heatmap image, stats, availability and discovery are regenerated instead.
fn keep_offline(m: &Message) -> bool {
    m.qos > 0
        && matches!(
            m.kind,
            Kind::Prediction | Kind::Heatmap | Kind::CommandResult
        )
}

/// A connection error in words that say what to check.
fn explain_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "authentication failed: bad username or password (check [mqtt] username and password_file)".into()
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            "authentication failed: not authorized (check [mqtt] username, password_file and the broker's ACL)".into()
        }
        ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        ConnectionError::Tls(t) => format!("TLS failed: {t} (check [mqtt] ca, cert and key)"),
        ConnectionError::Io(io) => format!("{io}"),
        other => other.to_string(),
    }
}
