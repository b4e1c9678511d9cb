//! Episodes of a class: "a forklift appeared at 10:02, left at 10:05, peak 0.93". Turns the
//! stream of per-frame top-1 classes into `new`, `update` and `end` changes, debounced so
//! that flicker between classes produces none:
//!
//! - a frame is a *hit* for class `c` when `c` is its top-1 class with a score of at
//!   least `min_confidence`;
//! - an episode of `c` opens (`new`) after `min_frames` consecutive hits for `c`, starting
//!   at the first of them; one episode is open at a time;
//! - it ends (`end`) after `end_frames` consecutive frames that are not hits for `c`,
//!   ending at its last hit; a class that took over by then opens its own episode on the
//!   same frame;
//! - while it is open, `update` is sent when its peak score rises by `peak_step` over the
//!   peak last sent, so an episode sends at most `1 / peak_step` updates.
//!
//! Pure: frames come in as arguments, so every rule is tested without a model or a clock.
//! The peak frame's `detail` (the daemon keeps its analysis, to explain it at the end)
//! is generic so the tests need none.

pub mod config;
pub mod stage;

use std::time::SystemTime;

/// `[events]`'s rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    pub min_confidence: f64,
    pub min_frames: u32,
    pub end_frames: u32,
    pub peak_step: f64,
}

/// A frame, by number and capture time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mark {
    pub frame: u64,
    pub at: SystemTime,
}

/// One classified frame, as the tracker sees it.
#[derive(Clone, Debug)]
pub struct Seen<T> {
    pub mark: Mark,
    pub class: usize,
    pub score: f64,
    pub detail: T,
}

/// What is known of an episode when a change is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// 1 for the first episode of this tracker, then +1 each.
    pub number: u64,
    pub class: usize,
    /// The first hit.
    pub start: Mark,
    /// The last hit so far; for an ended episode, its end.
    pub last: Mark,
    /// Hits so far.
    pub frames: u64,
    pub peak_score: f64,
    pub peak: Mark,
}

/// Why an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `end_frames` frames went by without a hit.
    Left,
    /// The daemon stopped, or new rules replaced the old.
    Stopped,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Left => "left",
            EndReason::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
pub enum Change<T> {
    New(Episode),
    Update(Episode),
    /// The episode, why it ended, and its peak frame's detail.
    End(Episode, EndReason, T),
}

/// An episode being built: its hits so far and its peak frame's detail.
#[derive(Debug)]
struct Run<T> {
    episode: Episode,
    detail: T,
    /// The peak score last sent in a `new` or `update`.
    sent_peak: f64,
}

impl<T> Run<T> {
    fn start(seen: Seen<T>) -> Self {
        Run {
            episode: Episode {
                number: 0,
                class: seen.class,
                start: seen.mark,
                last: seen.mark,
                frames: 1,
                peak_score: seen.score,
                peak: seen.mark,
            },
            detail: seen.detail,
            sent_peak: 0.0,
        }
    }

    fn extend(&mut self, seen: Seen<T>) {
        let e = &mut self.episode;
        e.last = seen.mark;
        e.frames += 1;
        if seen.score > e.peak_score {
            e.peak_score = seen.score;
            e.peak = seen.mark;
            self.detail = seen.detail;
        }
    }
}

/// Follows the episodes of one source.
#[derive(Debug)]
pub struct Tracker<T> {
    rules: Rules,
    open: Option<Run<T>>,
    /// Consecutive frames without a hit for the open episode's class.
    misses: u32,
    /// Consecutive hits for a class other than the open episode's.
    candidate: Option<Run<T>>,
    opened: u64,
}

impl<T> Tracker<T> {
    pub fn new(rules: Rules) -> Self {
        Tracker {
            rules,
            open: None,
            misses: 0,
            candidate: None,
            opened: 0,
        }
    }

    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Takes in the next frame; returns what changed, in order.
    pub fn observe(&mut self, seen: Seen<T>) -> Vec<Change<T>> {
        let hit = seen.score >= self.rules.min_confidence;
        let open_class = self.open.as_ref().map(|run| run.episode.class);
        if hit && open_class == Some(seen.class) {
            self.misses = 0;
            self.candidate = None;
            return self.extend_open(seen).into_iter().collect();
        }
        let mut changes = Vec::new();
        if open_class.is_some() {
            self.misses += 1;
        }
        self.candidate = match (hit, self.candidate.take()) {
            (false, _) => None,
            (true, Some(mut run)) if run.episode.class == seen.class => {
                run.extend(seen);
                Some(run)
            }
            (true, _) => Some(Run::start(seen)),
        };
        if self.misses >= self.rules.end_frames {
            changes.extend(self.end(EndReason::Left));
        }
        let confirmed = self
            .candidate
            .as_ref()
            .is_some_and(|run| run.episode.frames >= u64::from(self.rules.min_frames));
        if self.open.is_none() && confirmed {
            changes.push(self.open_candidate());
        }
        changes
    }

    /// Ends the open episode, if any, without waiting (the daemon stops).
    pub fn end(&mut self, reason: EndReason) -> Option<Change<T>> {
        self.misses = 0;
        let run = self.open.take()?;
        Some(Change::End(run.episode, reason, run.detail))
    }

    /// New rules: the open episode ends (what it was opened under no longer holds), and
    /// the next one is found by the new rules.
    pub fn set_rules(&mut self, rules: Rules) -> Option<Change<T>> {
        self.rules = rules;
        self.candidate = None;
        self.end(EndReason::Stopped)
    }

    fn extend_open(&mut self, seen: Seen<T>) -> Option<Change<T>> {
        let step = self.rules.peak_step;
        let run = self.open.as_mut().expect("an open episode");
        run.extend(seen);
        if run.episode.peak_score < run.sent_peak + step {
            return None;
        }
        run.sent_peak = run.episode.peak_score;
        Some(Change::Update(run.episode.clone()))
    }

    fn open_candidate(&mut self) -> Change<T> {
        let mut run = self.candidate.take().expect("a confirmed candidate");
        self.opened += 1;
        run.episode.number = self.opened;
        run.sent_peak = run.episode.peak_score;
        let episode = run.episode.clone();
        self.open = Some(run);
        Change::New(episode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: usize = 1;
    const B: usize = 2;

    fn rules() -> Rules {
        Rules {
            min_confidence: 0.5,
            min_frames: 3,
            end_frames: 3,
            peak_step: 0.05,
        }
    }

    /// Feeds `(class, score)` frames numbered from 1; returns the changes as
    /// `(frame, "new A", episode)`.
    fn feed(tracker: &mut Tracker<u64>, frames: &[(usize, f64)]) -> Vec<(u64, String, Episode)> {
        let mut out = Vec::new();
        for (i, &(class, score)) in frames.iter().enumerate() {
            let frame = i as u64 + 1;
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(frame);
            let seen = Seen {
                mark: Mark { frame, at },
                class,
                score,
                detail: frame,
            };
            for change in tracker.observe(seen) {
                out.push(describe(frame, change));
            }
        }
        out
    }

    fn describe(frame: u64, change: Change<u64>) -> (u64, String, Episode) {
        let name = |e: &Episode| if e.class == A { "A" } else { "B" };
        match change {
            Change::New(e) => (frame, format!("new {}", name(&e)), e),
            Change::Update(e) => (frame, format!("update {}", name(&e)), e),
            Change::End(e, reason, detail) => {
                assert_eq!(detail, e.peak.frame, "the detail is the peak frame's");
                (frame, format!("end {} {}", name(&e), reason.name()), e)
            }
        }
    }

    fn kinds(changes: &[(u64, String, Episode)]) -> Vec<(u64, &str)> {
        changes.iter().map(|(f, k, _)| (*f, k.as_str())).collect()
    }

    fn repeat(class: usize, score: f64, n: usize) -> Vec<(usize, f64)> {
        vec![(class, score); n]
    }

    #[test]
    fn a_then_b_then_a_gives_three_episodes() {
        let mut t = Tracker::new(rules());
        let frames = [repeat(A, 0.9, 10), repeat(B, 0.8, 10), repeat(A, 0.9, 10)].concat();
        let changes = feed(&mut t, &frames);
        assert_eq!(
            kinds(&changes),
            [
                (3, "new A"),
                (13, "end A left"),
                (13, "new B"),
                (23, "end B left"),
                (23, "new A"),
            ]
        );
        let first_end = &changes[1].2;
        assert_eq!((first_end.start.frame, first_end.last.frame), (1, 10));
        assert_eq!((first_end.frames, first_end.number), (10, 1));
        let b = &changes[2].2;
        assert_eq!((b.start.frame, b.frames, b.number), (11, 3, 2));
        let Some(Change::End(last, EndReason::Stopped, _)) = t.end(EndReason::Stopped) else {
            panic!("the third episode is open");
        };
        assert_eq!(
            (last.start.frame, last.last.frame, last.number),
            (21, 30, 3)
        );
    }

    #[test]
    fn flicker_between_two_classes_opens_nothing_new() {
        let mut t = Tracker::new(rules());
        let mut frames = repeat(A, 0.9, 5);
        for _ in 0..50 {
            frames.extend([(B, 0.9), (A, 0.9)]);
        }
        frames.extend([(B, 0.9), (B, 0.9), (A, 0.9)]);
        assert_eq!(kinds(&feed(&mut t, &frames)), [(3, "new A")]);
    }

    #[test]
    fn flicker_without_an_episode_opens_none() {
        let mut t = Tracker::new(rules());
        let frames: Vec<_> = (0..100).map(|i| (A + i % 2, 0.9)).collect();
        assert!(feed(&mut t, &frames).is_empty());
    }

    #[test]
    fn a_score_hovering_at_the_threshold_keeps_one_episode() {
        let mut t = Tracker::new(rules());
        let mut frames = repeat(A, 0.9, 5);
        frames.extend((0..60).map(|i| (A, if i % 3 == 2 { 0.45 } else { 0.55 })));
        let changes = feed(&mut t, &frames);
        assert_eq!(kinds(&changes), [(3, "new A")], "{changes:?}");
    }

    #[test]
    fn low_scores_are_no_hits() {
        let mut t = Tracker::new(rules());
        assert!(feed(&mut t, &repeat(A, 0.49, 20)).is_empty());
    }

    #[test]
    fn updates_follow_the_peak_in_steps() {
        let mut t = Tracker::new(rules());
        let scores = [0.6, 0.6, 0.6, 0.62, 0.64, 0.66, 0.7, 0.75, 0.5, 0.76];
        let frames: Vec<_> = scores.iter().map(|&s| (A, s)).collect();
        let changes = feed(&mut t, &frames);
        assert_eq!(
            kinds(&changes),
            [(3, "new A"), (6, "update A"), (8, "update A")]
        );
        assert_eq!(
            (changes[1].2.peak_score, changes[1].2.peak.frame),
            (0.66, 6)
        );
        assert_eq!(changes[2].2.frames, 8);
    }

    #[test]
    fn the_end_carries_the_peak_frame() {
        let mut t = Tracker::new(rules());
        let frames = [
            vec![(A, 0.6), (A, 0.95), (A, 0.7), (A, 0.6)],
            repeat(B, 0.2, 3),
        ]
        .concat();
        let changes = feed(&mut t, &frames);
        let (frame, kind, e) = changes.last().unwrap();
        assert_eq!((*frame, kind.as_str()), (7, "end A left"));
        assert_eq!((e.peak.frame, e.peak_score, e.last.frame), (2, 0.95, 4));
    }

    #[test]
    fn new_rules_end_the_open_episode() {
        let mut t = Tracker::new(rules());
        feed(&mut t, &repeat(A, 0.9, 4));
        let strict = Rules {
            min_frames: 10,
            ..rules()
        };
        assert!(matches!(
            t.set_rules(strict),
            Some(Change::End(_, EndReason::Stopped, _))
        ));
        assert!(feed(&mut t, &repeat(A, 0.9, 9)).is_empty());
        assert_eq!(t.rules(), strict);
    }

    #[test]
    fn one_frame_rules_follow_every_change() {
        let mut t = Tracker::new(Rules {
            min_frames: 1,
            end_frames: 1,
            ..rules()
        });
        let changes = feed(&mut t, &[(A, 0.9), (B, 0.9), (A, 0.9)]);
        assert_eq!(
            kinds(&changes),
            [
                (1, "new A"),
                (2, "end A left"),
                (2, "new B"),
                (3, "end B left"),
                (3, "new A")
            ]
        );
    }
}
