//! Latest-frame-wins handoff between capture and inference: a slot of one. A frame that
//! is replaced before inference took it is counted as dropped, so latency never grows.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub struct Latest<T> {
    slot: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest {
            slot: Mutex::new(None),
            ready: Condvar::new(),
        }
    }
}

impl<T> Latest<T> {
    /// Puts a value; returns true when it replaced one nobody took (a dropped frame).
    pub fn put(&self, value: T) -> bool {
        let replaced = self
            .slot
            .lock()
            .expect("slot poisoned")
            .replace(value)
            .is_some();
        self.ready.notify_one();
        replaced
    }

    /// Takes the value, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<T> {
        let guard = self.slot.lock().expect("slot poisoned");
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, timeout, |v| v.is_none())
            .expect("slot poisoned");
        guard.take()
    }

    /// Wakes a waiting taker (used at shutdown).
    pub fn wake(&self) {
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_replacements_count() {
        let l = Latest::default();
        assert!(!l.put(1));
        assert!(l.put(2));
        assert_eq!(l.take(Duration::ZERO), Some(2));
        assert_eq!(l.take(Duration::from_millis(10)), None);
    }
}
