//! When to explain a frame: requested maps and the schedule, taking turns when both
//! wait (so that neither a stream of requests nor a schedule shorter than a map starves
//! the other), then class changes, live maps in between. Pure: time comes in as an
//! argument, so every rule is tested without a broker, a model or a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cam::CamParams;
use crate::events::stage::Ended;

/// Explain requests that may wait for the CAM worker; more are refused as busy.
pub const MAX_PENDING_REQUESTS: usize = 4;

/// A command's id, possibly absent in the command itself.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestId(pub Option<String>);

/// Who asked for a map beyond the schedule, and so who hears of it.
#[derive(Debug)]
pub enum Asker {
    /// An `explain` command, answered on `cmd/result`: the map is of the next frame.
    Command(RequestId),
    /// An episode that ended: the map is of its peak frame, and the `end` goes with it.
    Event(Box<Ended>),
}

/// A map asked for by a command or an event.
#[derive(Debug)]
pub struct Request {
    pub params: CamParams,
    pub class: Option<usize>,
    pub asker: Asker,
}

/// Why a full map of the configured method is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Schedule,
    ClassChange,
    /// The live maps' weights are too old or the scene drifted from them.
    LiveExpired,
}

/// What to do with the frame just classified.
#[derive(Debug)]
pub enum Decision {
    /// Make the map a command asked for.
    Requested(Request),
    /// Make a full map of the configured method.
    Full(Reason),
    /// Publish a live map (if the live weights are still valid; else make a full map).
    Live,
    Nothing,
}

/// The triggers of `[cam]`.
#[derive(Clone, Debug)]
pub struct Triggers {
    /// Time between scheduled maps; zero turns the schedule off.
    pub interval: Duration,
    pub on_class_change: bool,
    /// Class changes count only at or above this top-1 probability.
    pub min_confidence: f64,
    /// Live maps between full maps.
    pub live: bool,
}

pub struct Scheduler {
    triggers: Triggers,
    last_class: Option<usize>,
    /// When the last full map of the configured method was handed to the CAM worker.
    last_full: Option<Instant>,
    requests: VecDeque<Request>,
    /// The last map handed to the CAM worker was a requested one.
    request_was_last: bool,
}

impl Scheduler {
    pub fn new(triggers: Triggers) -> Self {
        Scheduler {
            triggers,
            last_class: None,
            last_full: None,
            requests: VecDeque::new(),
            request_was_last: false,
        }
    }

    /// Queues a command's request; hands it back when [`MAX_PENDING_REQUESTS`] wait.
    pub fn request(&mut self, request: Request) -> Result<(), Request> {
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            return Err(request);
        }
        self.requests.push_back(request);
        Ok(())
    }

    pub fn set_interval(&mut self, interval: Duration) {
        self.triggers.interval = interval;
    }

    pub fn set_live(&mut self, live: bool) {
        self.triggers.live = live;
    }

    pub fn triggers(&self) -> &Triggers {
        &self.triggers
    }

    /// New triggers (a reload): the schedule starts afresh, so the next frame gets a map
    /// when there is a schedule; requests that wait are kept.
    pub fn set_triggers(&mut self, triggers: Triggers) {
        self.triggers = triggers;
        self.last_full = None;
    }

    /// Decides for a frame whose top-1 class is `class` with probability `confidence`.
    pub fn decide(&mut self, now: Instant, class: usize, confidence: f64) -> Decision {
        let changed = self.triggers.on_class_change
            && confidence >= self.triggers.min_confidence
            && self.last_class.is_some_and(|c| c != class);
        self.last_class = Some(class);
        let due = !self.triggers.interval.is_zero()
            && self
                .last_full
                .is_none_or(|t| now.saturating_duration_since(t) >= self.triggers.interval);
        let schedules_turn = due && self.request_was_last;
        let requests_turn = !self.requests.is_empty() && !schedules_turn;
        if requests_turn {
            Decision::Requested(self.requests.pop_front().expect("a request waits"))
        } else if due {
            Decision::Full(Reason::Schedule)
        } else if changed {
            Decision::Full(Reason::ClassChange)
        } else if self.triggers.live {
            Decision::Live
        } else {
            Decision::Nothing
        }
    }

    /// The CAM worker took a full map of the configured method at `now`.
    pub fn started_full(&mut self, now: Instant) {
        self.last_full = Some(now);
        self.request_was_last = false;
    }

    /// The CAM worker took a requested map; it does not move the schedule.
    pub fn started_request(&mut self) {
        self.request_was_last = true;
    }

    /// The CAM worker was busy: the request waits for the next frame, first in line. (A
    /// scheduled map needs nothing: it is simply due again.)
    pub fn requeue(&mut self, request: Request) {
        self.requests.push_front(request);
    }

    /// The first request that waits, when it needs no new frame: an episode's end, whose
    /// map is of its peak frame. It goes while no frame comes (the source ended or
    /// stalls), so that an end never waits for a frame.
    pub fn take_frameless(&mut self) -> Option<Request> {
        let frameless = matches!(self.requests.front()?.asker, Asker::Event(_));
        frameless.then(|| self.requests.pop_front()).flatten()
    }

    /// Takes the requests that wait (the daemon stops).
    pub fn take_requests(&mut self) -> Vec<Request> {
        self.requests.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn scheduler(interval: Duration, on_class_change: bool, live: bool) -> Scheduler {
        Scheduler::new(Triggers {
            interval,
            on_class_change,
            min_confidence: 0.5,
            live,
        })
    }

    fn request(id: &str) -> Request {
        Request {
            params: CamParams::new("iscam", None, None).unwrap(),
            class: None,
            asker: Asker::Command(RequestId(Some(id.into()))),
        }
    }

    /// The id of the command a decision answers.
    fn requested(d: &Decision) -> Option<&str> {
        match d {
            Decision::Requested(Request {
                asker: Asker::Command(RequestId(id)),
                ..
            }) => id.as_deref(),
            _ => None,
        }
    }

    /// The CAM worker takes what `d` asks for.
    fn start(s: &mut Scheduler, now: Instant, d: &Decision) {
        match d {
            Decision::Requested(_) => s.started_request(),
            Decision::Full(_) => s.started_full(now),
            Decision::Live | Decision::Nothing => {}
        }
    }

    /// The CAM worker is busy.
    fn busy(s: &mut Scheduler, d: Decision) {
        if let Decision::Requested(r) = d {
            s.requeue(r);
        }
    }

    fn is_full(d: &Decision, reason: Reason) -> bool {
        matches!(d, Decision::Full(r) if *r == reason)
    }

    #[test]
    fn the_schedule_fires_on_the_first_frame_and_then_every_interval() {
        let t0 = Instant::now();
        let mut s = scheduler(10 * S, false, false);
        assert!(is_full(&s.decide(t0, 1, 0.9), Reason::Schedule));
        start(&mut s, t0, &Decision::Full(Reason::Schedule));
        assert!(matches!(s.decide(t0 + 9 * S, 1, 0.9), Decision::Nothing));
        assert!(is_full(&s.decide(t0 + 10 * S, 1, 0.9), Reason::Schedule));
    }

    #[test]
    fn a_zero_interval_turns_the_schedule_off_and_set_interval_changes_it() {
        let t0 = Instant::now();
        let mut s = scheduler(Duration::ZERO, false, false);
        assert!(matches!(s.decide(t0, 1, 0.9), Decision::Nothing));
        s.set_interval(S);
        assert!(is_full(&s.decide(t0, 1, 0.9), Reason::Schedule));
    }

    #[test]
    fn a_busy_worker_leaves_the_scheduled_map_due() {
        let t0 = Instant::now();
        let mut s = scheduler(10 * S, false, false);
        let d = s.decide(t0, 1, 0.9);
        busy(&mut s, d);
        assert!(is_full(&s.decide(t0 + S, 1, 0.9), Reason::Schedule));
    }

    #[test]
    fn a_confident_class_change_fires_and_an_unconfident_one_does_not() {
        let t0 = Instant::now();
        let mut s = scheduler(Duration::ZERO, true, false);
        assert!(
            matches!(s.decide(t0, 1, 0.9), Decision::Nothing),
            "no change on the first frame"
        );
        assert!(is_full(&s.decide(t0, 2, 0.9), Reason::ClassChange));
        assert!(matches!(s.decide(t0, 3, 0.4), Decision::Nothing));
        assert!(
            matches!(s.decide(t0, 3, 0.9), Decision::Nothing),
            "same class"
        );
    }

    #[test]
    fn class_changes_are_ignored_when_turned_off() {
        let t0 = Instant::now();
        let mut s = scheduler(Duration::ZERO, false, false);
        s.decide(t0, 1, 0.9);
        assert!(matches!(s.decide(t0, 2, 0.99), Decision::Nothing));
    }

    #[test]
    fn live_maps_fill_the_time_between_full_maps() {
        let t0 = Instant::now();
        let mut s = scheduler(10 * S, true, true);
        assert!(is_full(&s.decide(t0, 1, 0.9), Reason::Schedule));
        start(&mut s, t0, &Decision::Full(Reason::Schedule));
        assert!(matches!(s.decide(t0 + S, 1, 0.9), Decision::Live));
        assert!(is_full(&s.decide(t0 + 2 * S, 2, 0.9), Reason::ClassChange));
    }

    #[test]
    fn requests_come_in_order_and_a_busy_worker_keeps_them_first() {
        let t0 = Instant::now();
        let mut s = scheduler(10 * S, true, true);
        let scheduled = s.decide(t0, 1, 0.9);
        start(&mut s, t0, &scheduled);
        s.request(request("a")).unwrap();
        s.request(request("b")).unwrap();
        let first = s.decide(t0, 1, 0.9);
        assert_eq!(requested(&first), Some("a"));
        busy(&mut s, first);
        let again = s.decide(t0, 1, 0.9);
        assert_eq!(requested(&again), Some("a"));
        start(&mut s, t0, &again);
        let next = s.decide(t0, 2, 0.9);
        assert_eq!(requested(&next), Some("b"));
    }

    #[test]
    fn a_due_schedule_and_waiting_requests_take_turns() {
        let t0 = Instant::now();
        let mut s = scheduler(10 * S, false, false);
        for id in ["a", "b", "c"] {
            s.request(request(id)).unwrap();
        }
        let a = s.decide(t0, 1, 0.9);
        assert_eq!(requested(&a), Some("a"));
        start(&mut s, t0, &a);
        let scheduled = s.decide(t0, 1, 0.9);
        assert!(
            is_full(&scheduled, Reason::Schedule),
            "due, after a request"
        );
        start(&mut s, t0, &scheduled);
        let b = s.decide(t0 + 5 * S, 1, 0.9);
        assert_eq!(requested(&b), Some("b"));
        start(&mut s, t0 + 5 * S, &b);
        let again = s.decide(t0 + 10 * S, 1, 0.9);
        assert!(
            is_full(&again, Reason::Schedule),
            "requests do not move the schedule"
        );
        start(&mut s, t0 + 10 * S, &again);
        let c = s.decide(t0 + 30 * S, 1, 0.9);
        assert_eq!(requested(&c), Some("c"));
    }

    #[test]
    fn at_most_a_few_requests_wait() {
        let mut s = scheduler(Duration::ZERO, false, false);
        for i in 0..MAX_PENDING_REQUESTS {
            s.request(request(&i.to_string())).unwrap();
        }
        let refused = s.request(request("one too many")).unwrap_err();
        let refused = Decision::Requested(refused);
        assert_eq!(requested(&refused), Some("one too many"));
    }
}
