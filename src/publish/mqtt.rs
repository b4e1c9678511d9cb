//! The connection task: owns the rumqttc event loop, reconnects with exponential backoff
//! and jitter, and keeps QoS-1 messages in a bounded outbox through outages.
//!
//! rumqttc alone would lose them: on reconnect without a resumed session it clears the
//! requests it was holding. So every message handed to rumqttc is tracked by the
//! [`Outbox`] until the broker acknowledges it (QoS 1) or it is written (QoS 0); on a
//! disconnect the unacknowledged ones go back to the front, in order, and rumqttc's copies
//! are dropped. This task is the I/O around the outbox.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS,
};
use tokio::sync::{mpsc, watch};

use super::outbox::{Outbox, MAX_IN_FLIGHT};
use super::{discovery, Kind, Message, Topics};
use crate::publish::payload::{Origin, Run};
use crate::telemetry::Stats;

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
    pub origin: Origin,
    pub outbox: usize,
    /// Home Assistant discovery, when it is on.
    pub discovery: Option<discovery::Options>,
    pub shutdown_timeout: Duration,
    /// The page's copy of what is published (`[web]`).
    pub board: Option<Arc<crate::web::Board>>,
}

struct Backoff {
    next: Duration,
}

/// A connection must stay up this long before the backoff starts again from its minimum:
/// a message that drops the connection as soon as it is made (an oversized one, say)
/// must not turn the backoff into a tight reconnect loop.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

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
    /// When the current connection was made.
    connected_at: Option<tokio::time::Instant>,
    outbox: Outbox,
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
    let settings_outbox = settings.outbox;
    let mut conn = Connection {
        client,
        settings,
        stats,
        connected: false,
        ever_connected: false,
        connected_at: None,
        outbox: Outbox::new(settings_outbox),
    };
    let mut backoff = Backoff::new();
    loop {
        // One `poll` is kept until it completes: dropped while it connects, it would leave
        // a half-made connection behind and start another under the same client id, and
        // the broker would publish the first one's last will (`offline`).
        let event = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    event = &mut poll => break Some(event),
                    message = messages.recv() => match message {
                        Some(m) => {
                            conn.submit(m);
                            conn.drain();
                        }
                        None => break None,
                    },
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            break None;
                        }
                    }
                }
            }
        };
        match event {
            None => break,
            Some(Ok(event)) => conn.on_event(event, &incoming),
            Some(Err(e)) => {
                if conn
                    .connected_at
                    .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)
                {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                conn.on_disconnect(&mut eventloop, &e, delay);
                // Messages keep coming in while it waits: the outbox keeps what it may,
                // and the stages (and the page) never wait for the broker.
                let wait = tokio::time::sleep(delay);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        _ = shutdown.changed() => break,
                        message = messages.recv() => match message {
                            Some(m) => conn.submit(m),
                            None => break,
                        },
                    }
                }
            }
        }
        if *shutdown.borrow() {
            break;
        }
        conn.drain();
    }
    conn.shut_down(&mut eventloop, &mut messages).await;
}

impl Connection {
    /// Handles one event.
    fn on_event(&mut self, event: Event, incoming: &mpsc::Sender<Incoming>) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                self.on_connected()
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => self.outbox.written(pkid),
            Event::Incoming(Packet::PubAck(ack)) => self.outbox.acknowledged(ack.pkid),
            Event::Incoming(Packet::Publish(p)) => self.on_publish(p, incoming),
            _ => {}
        }
    }

    /// A connection is made: announce, clear a retained command, subscribe.
    fn on_connected(&mut self) {
        if self.ever_connected {
            tracing::info!(
                "reconnected to the broker; {} message(s) waiting in the outbox",
                self.outbox.queued()
            );
        } else {
            tracing::info!("connected to the broker");
        }
        self.stats.broker_connected(true, self.ever_connected);
        self.connected = true;
        self.ever_connected = true;
        self.connected_at = Some(tokio::time::Instant::now());
        // Handed to the client before the subscriptions, so that the broker clears
        // a retained command before it could send it.
        self.announce();
        self.outbox
            .push_first(vec![clear_retained_command(&self.settings.topics)]);
        self.drain();
        let t = &self.settings.topics;
        let subs = [
            t.command(),
            self.settings
                .discovery
                .as_ref()
                .map(|d| format!("{}/status", d.prefix))
                .unwrap_or_default(),
        ];
        for topic in subs.into_iter().filter(|t| !t.is_empty()) {
            if let Err(e) = self.client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                tracing::warn!("cannot subscribe to {topic}: {e}");
            }
        }
    }

    /// A message on a subscribed topic: a command, or Home Assistant's status.
    fn on_publish(&mut self, p: rumqttc::Publish, incoming: &mpsc::Sender<Incoming>) {
        if p.topic == self.settings.topics.command() {
            if p.payload.is_empty() {
                // How a retained command is cleared: not a command.
                return;
            }
            self.stats.command_received();
            if p.retain {
                // A retained command would run again at every reconnect.
                self.stats.command_rejected();
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
                self.stats.command_rejected();
                tracing::warn!("command dropped: the daemon is busy with earlier commands");
            }
        } else if p.payload.as_ref() == b"online" {
            tracing::info!("Home Assistant came online: sending discovery again");
            self.announce();
        }
    }

    /// Availability `online` and discovery, first in line.
    fn announce(&mut self) {
        self.outbox.push_first(announcements(
            &self.settings.topics,
            &self.settings.origin,
            self.settings.discovery.as_ref(),
        ));
        self.update_stats();
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
        self.stats.broker_connected(false, false);
        // Take back everything rumqttc holds: it would drop it on a fresh session, or
        // replay it on a resumed one after messages we queue now.
        eventloop.pending.clear();
        self.outbox.disconnected();
        self.update_stats();
    }

    /// Queues a message; it leaves when connected and in order.
    fn submit(&mut self, m: Message) {
        if let Some(board) = &self.settings.board {
            board.observe(&m);
        }
        self.outbox.push(m, self.connected);
        self.drain();
    }

    /// Hands queued messages to rumqttc while connected and within the in-flight bound.
    fn drain(&mut self) {
        while self.connected {
            let Some(m) = self.outbox.next() else {
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
                Ok(()) => self.outbox.handed(m),
                Err(_) => {
                    self.outbox.refused(m);
                    break;
                }
            }
        }
        self.update_stats();
    }

    fn update_stats(&self) {
        self.stats.outbox(
            self.outbox.queued(),
            self.outbox.dropped(),
            self.outbox.dropped_offline(),
        );
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
        while self.connected && self.outbox.unconfirmed() > 0 {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(event)) => {
                    let (tx, _rx) = mpsc::channel(1);
                    self.on_event(event, &tx);
                    self.drain();
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let left = self.outbox.unconfirmed();
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

/// Commands act once, so a retained one is never a command: iscamd clears it at every
/// connect, before it subscribes. One too large for the client would otherwise drop the
/// connection at every connect.
fn clear_retained_command(topics: &Topics) -> Message {
    Message {
        topic: topics.command(),
        payload: Vec::new(),
        qos: 1,
        retain: true,
        kind: Kind::Availability,
    }
}

/// The run, availability `online` (retained) and, when it is on, Home Assistant discovery.
pub fn announcements(
    topics: &Topics,
    origin: &Origin,
    discovery: Option<&discovery::Options>,
) -> Vec<Message> {
    let run = serde_json::to_vec(&Run::new(origin)).expect("run serialises");
    let mut messages = vec![
        Message {
            topic: topics.run(),
            payload: run,
            qos: 1,
            retain: true,
            kind: Kind::Availability,
        },
        Message {
            topic: topics.availability(),
            payload: b"online".to_vec(),
            qos: 1,
            retain: true,
            kind: Kind::Availability,
        },
    ];
    if let Some(settings) = discovery {
        messages.extend(discovery::messages(settings, &origin.device, topics));
    }
    messages
}

/// A connection error in words that say what to check.
pub(super) fn explain_error(e: &ConnectionError) -> String {
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
