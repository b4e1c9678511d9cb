//! How stages learn that the daemon stops, and how the topology learns that a stage has
//! ended (after tokio's mini-redis): one [`Shutdown`] signal that every stage observes — a
//! blocking check for the CPU threads, an awaitable one for tasks — and an [`Ends`]
//! channel on which every stage reports once how it ended. Each stage holds a sender;
//! when all of them are dropped the channel closes, which tells the topology that
//! everything has finished.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// Turns the shared [`Shutdown`] on; owned by the topology.
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

/// Whether the daemon is stopping. Cheap to clone; one per stage.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// For threads that check between steps.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// For tasks: resolves once the daemon stops (at once if it already has).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which only happens once the daemon stops.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// How a stage ended.
#[derive(Debug)]
pub enum End {
    /// Its `run` returned normally.
    Finished,
    /// Its `run` returned an error.
    Failed(String),
    Panicked(String),
}

/// One stage's end, as reported to the topology.
#[derive(Debug)]
pub struct Ended {
    pub stage: &'static str,
    pub end: End,
}

/// The sending side of the stage-end channel; every stage holds a clone.
#[derive(Clone)]
pub struct Ends {
    tx: mpsc::Sender<Ended>,
    /// Set the moment a stage fails, before the topology hears of it, so that the
    /// watchdog is not fed in between.
    failed: Arc<AtomicBool>,
}

impl Ends {
    /// The channel for at most `stages` stages (each reports once, so it never fills).
    pub fn new(stages: usize) -> (Ends, mpsc::Receiver<Ended>) {
        let (tx, rx) = mpsc::channel(stages.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        (Ends { tx, failed }, rx)
    }

    /// True once any stage has failed or panicked: for the watchdog.
    pub fn failure_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }

    /// Flags a failure the moment a stage's thread starts to panic, before the panic
    /// message and backtrace are written (which can take longer than a watchdog ping).
    pub fn flag_panics(&self) {
        let failed = self.failed.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().map(str::to_owned);
            if name.is_some_and(|n| n.starts_with(STAGE_THREAD_PREFIX)) {
                failed.store(true, SeqCst);
            }
            previous(info)
        }));
    }

    pub fn report(&self, stage: &'static str, end: End) {
        if !matches!(end, End::Finished) {
            self.failed.store(true, SeqCst);
        }
        if let Err(e) = self.tx.try_send(Ended { stage, end }) {
            tracing::error!("stage {stage} ended but the topology is gone: {e}");
        }
    }
}

/// The names of the daemon's threads, stage threads and the I/O runtime's, begin so.
pub const STAGE_THREAD_PREFIX: &str = "iscamd-";

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_reaches_threads_and_tasks() {
        let (trigger, shutdown) = Trigger::new();
        let mut task_view = shutdown.clone();
        assert!(!shutdown.is_shutdown());
        trigger.fire();
        assert!(shutdown.is_shutdown());
        task_view.recv().await;
    }

    #[tokio::test]
    async fn a_failure_is_flagged_and_the_channel_closes_when_all_stages_are_gone() {
        let (ends, mut rx) = Ends::new(2);
        let (a, b) = (ends.clone(), ends.clone());
        drop(ends);
        let failed = a.failure_flag();
        a.report("capture", End::Finished);
        assert!(!failed.load(SeqCst));
        b.report("inference", End::Panicked("boom".into()));
        assert!(failed.load(SeqCst));
        drop((a, b));
        let first = rx.recv().await.unwrap();
        assert_eq!(first.stage, "capture");
        let second = rx.recv().await.unwrap();
        assert!(matches!(second.end, End::Panicked(ref m) if m == "boom"));
        assert!(rx.recv().await.is_none(), "closed once every stage is gone");
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let s = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(s.as_ref()), "static");
        let n = 7;
        let f = std::panic::catch_unwind(move || panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(f.as_ref()), "formatted 7");
    }
}
