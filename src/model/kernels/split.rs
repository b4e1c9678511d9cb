//! How a map's passes share the cores given to it: several passes in flight, one thread
//! each, or fewer passes whose matrix products are split over threads (tract's rayon
//! executor). Which is faster depends on the CPU's caches and the model's products, so it
//! is measured per model and thread count (`model/tract/measure.rs`), or forced with
//! [`IN_FLIGHT_VAR`].

use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tract_onnx::tract_core::tract_linalg::multithread::{multithread_tract_scope, Executor};

/// The environment variable that forces how many passes run at once (the rest of the
/// threads go to each pass), e.g. `1`.
pub const IN_FLIGHT_VAR: &str = "ISCAMD_IN_FLIGHT";

/// `in_flight` passes at once, each splitting its matrix products over `per_pass` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub in_flight: usize,
    pub per_pass: usize,
}

impl Split {
    /// One pass per thread: what runs unless a measurement or [`IN_FLIGHT_VAR`] says otherwise.
    pub fn passes(threads: usize) -> Split {
        Split {
            in_flight: threads.max(1),
            per_pass: 1,
        }
    }

    /// `threads` shared by `in_flight` passes (at least one, at most `threads`).
    pub fn with_in_flight(threads: usize, in_flight: usize) -> Split {
        let threads = threads.max(1);
        let in_flight = in_flight.clamp(1, threads);
        Split {
            in_flight,
            per_pass: threads / in_flight,
        }
    }

    /// Every way to share `threads` evenly, all passes in flight first.
    pub fn candidates(threads: usize) -> Vec<Split> {
        let threads = threads.max(1);
        (1..=threads)
            .rev()
            .filter(|in_flight| threads.is_multiple_of(*in_flight))
            .map(|in_flight| Split::with_in_flight(threads, in_flight))
            .collect()
    }

    /// Runs `f` (which runs passes) on this thread with the executor its passes use.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        multithread_tract_scope(self.executor(), f)
    }

    /// Single-threaded products, or a pool of `in_flight × per_pass` threads that the passes
    /// in flight share. Pools are kept per size: a process asks for one or two sizes.
    fn executor(&self) -> Executor {
        static POOLS: Mutex<Vec<(usize, Executor)>> = Mutex::new(Vec::new());
        if self.per_pass <= 1 {
            return Executor::SingleThread;
        }
        let threads = self.in_flight * self.per_pass;
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pool)) = pools.iter().find(|(n, _)| *n == threads) {
            return pool.clone();
        }
        let pool = Executor::multithread_with_name(threads, "iscamd-pass");
        pools.push((threads, pool.clone()));
        pool
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{} in flight × {} each",
            plural(self.in_flight, "pass", "passes"),
            plural(self.per_pass, "thread", "threads")
        )
    }
}

/// The split a model's maps run with for some thread count, and how it was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChosenSplit {
    pub threads: usize,
    pub split: Split,
    /// `one pass per thread`, `forced by …`, `measured` or `cached`.
    pub how: String,
    /// Passes per second of each candidate (`2x1`: two in flight, one thread each), fastest
    /// first; empty unless measured.
    pub measured: Vec<(String, f64)>,
}

impl ChosenSplit {
    pub fn unmeasured(threads: usize, split: Split, how: &str) -> ChosenSplit {
        ChosenSplit {
            threads,
            split,
            how: how.into(),
            measured: Vec::new(),
        }
    }
}

impl fmt::Display for ChosenSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let threads = match self.threads {
            1 => "1 thread".to_string(),
            n => format!("{n} threads"),
        };
        write!(f, "{} on {threads}, {}", self.split, self.how)?;
        if !self.measured.is_empty() {
            let table: Vec<String> = self
                .measured
                .iter()
                .map(|(name, rate)| format!("{name} {rate:.1}"))
                .collect();
            write!(f, " (passes/s: {})", table.join(", "))?;
        }
        Ok(())
    }
}

/// How passes share their threads under the tuned policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InFlight {
    /// Measured per thread count when a map first needs it.
    #[default]
    Measured,
    /// At most this many passes at once ([`IN_FLIGHT_VAR`]).
    Forced(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_shared_evenly_all_passes_in_flight_first() {
        assert_eq!(Split::candidates(1), vec![Split::passes(1)]);
        let four: Vec<(usize, usize)> = Split::candidates(4)
            .iter()
            .map(|s| (s.in_flight, s.per_pass))
            .collect();
        assert_eq!(four, [(4, 1), (2, 2), (1, 4)]);
        assert_eq!(Split::candidates(3).len(), 2);
        assert_eq!(Split::with_in_flight(2, 9), Split::passes(2));
        assert_eq!(Split::with_in_flight(0, 0), Split::passes(1));
    }

    #[test]
    fn a_split_runs_its_passes_with_a_pool_of_its_threads() {
        use tract_onnx::tract_core::tract_linalg::multithread::current_tract_executor;
        let pooled = Split::with_in_flight(2, 1);
        let inside = pooled.scope(current_tract_executor);
        assert!(matches!(inside, Executor::MultiThread(_)), "{inside:?}");
        let single = Split::passes(2).scope(current_tract_executor);
        assert!(matches!(single, Executor::SingleThread), "{single:?}");
        assert!(matches!(current_tract_executor(), Executor::SingleThread));
    }

    #[test]
    fn splits_read_as_english() {
        assert_eq!(
            Split::passes(1).to_string(),
            "1 pass in flight × 1 thread each"
        );
        assert_eq!(
            Split::with_in_flight(4, 2).to_string(),
            "2 passes in flight × 2 threads each"
        );
    }
}
