//! What the connection owes the broker, and in which order: a bounded queue of messages
//! waiting to be sent (oldest dropped first when full, and counted), the messages handed
//! to the MQTT client and not yet written, and the QoS-1 messages written and not yet
//! acknowledged. On a disconnect everything unconfirmed goes back to the front of the
//! queue, in its original order, so that a reconnect replays it first.
//!
//! Pure: no I/O and no clock; the connection task drives it.

use std::collections::VecDeque;

use super::{Kind, Message};

/// Messages handed to the client and not yet acknowledged, at most.
pub const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    queued: VecDeque<Message>,
    /// Handed to the client, waiting for it to write them (in order).
    handed: VecDeque<Message>,
    /// Written with QoS 1, waiting for the broker's PUBACK, by packet id.
    unacked: VecDeque<(u16, Message)>,
    /// Dropped because the queue was full.
    dropped: u64,
    /// Not queued because they are worthless after an outage (see [`keep_offline`]).
    dropped_offline: u64,
}

impl Outbox {
    /// An outbox keeping at most `capacity` queued messages.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            capacity,
            queued: VecDeque::new(),
            handed: VecDeque::new(),
            unacked: VecDeque::new(),
            dropped: 0,
            dropped_offline: 0,
        }
    }

    /// Queues a message behind the others; while offline, only what is worth keeping.
    pub fn push(&mut self, message: Message, connected: bool) {
        if !connected && !keep_offline(&message) {
            self.dropped_offline += 1;
            return;
        }
        self.queued.push_back(message);
        self.trim();
    }

    /// Puts messages first in line, in the order given (availability and discovery).
    pub fn push_first(&mut self, messages: Vec<Message>) {
        for m in messages.into_iter().rev() {
            self.queued.push_front(m);
        }
        self.trim();
    }

    /// The next message to hand to the client, if the in-flight bound allows one.
    pub fn next(&mut self) -> Option<Message> {
        if self.handed.len() + self.unacked.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.queued.pop_front()
    }

    /// The client took `message`: it is in flight.
    pub fn handed(&mut self, message: Message) {
        self.handed.push_back(message);
    }

    /// The client refused `message` (its queue is full): it goes back first in line.
    pub fn refused(&mut self, message: Message) {
        self.queued.push_front(message);
    }

    /// The client wrote the oldest handed message as packet `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(m) = self.handed.pop_front() {
            if m.qos > 0 {
                self.unacked.push_back((pkid, m));
            }
        }
    }

    /// The broker acknowledged packet `pkid`.
    pub fn acknowledged(&mut self, pkid: u16) {
        if let Some(i) = self.unacked.iter().position(|(p, _)| *p == pkid) {
            self.unacked.remove(i);
        }
    }

    /// The connection is lost: everything unconfirmed goes back to the front, in order;
    /// what is not worth keeping through an outage is dropped.
    pub fn disconnected(&mut self) {
        let back: Vec<Message> = self
            .unacked
            .drain(..)
            .map(|(_, m)| m)
            .chain(self.handed.drain(..))
            .collect();
        for m in back.into_iter().rev() {
            self.queued.push_front(m);
        }
        self.queued.retain(keep_offline);
        self.trim();
    }

    /// Messages queued, not yet handed to the client.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Messages not yet confirmed: queued, handed or unacknowledged.
    pub fn unconfirmed(&self) -> usize {
        self.queued.len() + self.handed.len() + self.unacked.len()
    }

    /// Dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Not kept because the broker was unreachable, since the start.
    pub fn dropped_offline(&self) -> u64 {
        self.dropped_offline
    }

    /// Drops the oldest queued data beyond the capacity (announcements first in line stay).
    fn trim(&mut self) {
        while self.queued.len() > self.capacity {
            let oldest = self.queued.iter().position(keep_offline).unwrap_or(0);
            self.queued.remove(oldest);
            self.dropped += 1;
        }
    }
}

/// Messages worth keeping through an outage: QoS ≥ 1 data, settings, events and command
/// results.
/// A stale heatmap image, stats, availability and discovery are regenerated instead.
fn keep_offline(m: &Message) -> bool {
    m.qos > 0
        && matches!(
            m.kind,
            Kind::Prediction | Kind::Heatmap | Kind::CommandResult | Kind::Settings | Kind::Event
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: Kind, qos: u8, n: usize) -> Message {
        Message {
            topic: format!("t/{n}"),
            payload: n.to_string().into_bytes(),
            qos,
            retain: false,
            kind,
        }
    }

    fn prediction(n: usize) -> Message {
        message(Kind::Prediction, 1, n)
    }

    /// Hands out everything the in-flight bound allows; returns the topics.
    fn send_all(outbox: &mut Outbox) -> Vec<String> {
        let mut sent = Vec::new();
        while let Some(m) = outbox.next() {
            sent.push(m.topic.clone());
            outbox.handed(m);
        }
        sent
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let mut outbox = Outbox::new(3);
        for n in 0..5 {
            outbox.push(prediction(n), false);
        }
        assert_eq!(outbox.queued(), 3);
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(send_all(&mut outbox), ["t/2", "t/3", "t/4"]);
    }

    #[test]
    fn offline_only_what_is_worth_keeping_is_queued() {
        let mut outbox = Outbox::new(10);
        outbox.push(message(Kind::Stats, 0, 0), false);
        outbox.push(message(Kind::HeatmapImage, 1, 1), false);
        outbox.push(message(Kind::Prediction, 0, 2), false);
        outbox.push(prediction(3), false);
        outbox.push(message(Kind::CommandResult, 1, 4), false);
        assert_eq!(outbox.dropped_offline(), 3);
        assert_eq!(send_all(&mut outbox), ["t/3", "t/4"]);
        outbox.push(message(Kind::Stats, 0, 5), true);
        assert_eq!(send_all(&mut outbox), ["t/5"], "online, everything goes");
    }

    #[test]
    fn unconfirmed_messages_are_replayed_first_and_in_order_after_a_disconnect() {
        let mut outbox = Outbox::new(10);
        for n in 0..4 {
            outbox.push(prediction(n), true);
        }
        assert_eq!(send_all(&mut outbox), ["t/0", "t/1", "t/2", "t/3"]);
        outbox.written(1);
        outbox.written(2);
        outbox.written(3); // t/3 is still with the client
        outbox.acknowledged(1);
        outbox.push(prediction(4), true);
        outbox.disconnected();
        assert_eq!(outbox.unconfirmed(), 4);
        assert_eq!(send_all(&mut outbox), ["t/1", "t/2", "t/3", "t/4"]);
    }

    #[test]
    fn a_disconnect_drops_what_an_outage_makes_worthless() {
        let mut outbox = Outbox::new(10);
        outbox.push(message(Kind::HeatmapImage, 1, 0), true);
        outbox.push(prediction(1), true);
        send_all(&mut outbox);
        outbox.disconnected();
        assert_eq!(send_all(&mut outbox), ["t/1"]);
    }

    #[test]
    fn announcements_go_first_and_refused_messages_keep_their_place() {
        let mut outbox = Outbox::new(10);
        outbox.push(prediction(2), true);
        let announce = vec![
            message(Kind::Availability, 1, 0),
            message(Kind::Discovery, 1, 1),
        ];
        outbox.push_first(announce);
        let first = outbox.next().unwrap();
        outbox.refused(first);
        assert_eq!(send_all(&mut outbox), ["t/0", "t/1", "t/2"]);
    }

    #[test]
    fn a_full_queue_keeps_the_announcements_in_front_of_it() {
        let mut outbox = Outbox::new(2);
        outbox.push_first(vec![message(Kind::Availability, 1, 0)]);
        outbox.push(prediction(1), true);
        outbox.push(prediction(2), true);
        assert_eq!(send_all(&mut outbox), ["t/0", "t/2"]);
        assert_eq!(outbox.dropped(), 1);
    }

    #[test]
    fn at_most_the_in_flight_bound_is_handed_out() {
        let mut outbox = Outbox::new(1000);
        for n in 0..MAX_IN_FLIGHT + 5 {
            outbox.push(prediction(n), true);
        }
        assert_eq!(send_all(&mut outbox).len(), MAX_IN_FLIGHT);
        outbox.written(7);
        outbox.acknowledged(7);
        assert_eq!(send_all(&mut outbox), [format!("t/{MAX_IN_FLIGHT}")]);
    }
}
