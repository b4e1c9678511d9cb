//! How tract runs iscamd's models: which of its matrix kernels, and (see [`Policy`]) whether
//! iscamd's own ops replace some of its steps: max-pooling, int8 packing and input
//! quantisation, f32 ReLU folding.
//!
//! tract ranks its matrix kernels through dispatch *tiers* that any linked crate may add
//! (`tract_linalg::mmm_tiers`, collected with `inventory`); the highest tier with an answer
//! picks the kernel when a plan is optimised. iscamd adds one tier above tract's own, on
//! every machine, that answers with the [`Choice`] of the model being optimised — the
//! candidate (a tract tier, or its widest tile) measured fastest for that model on this CPU
//! (`model/tract/measure.rs`), or forced with [`CHOICE_VAR`]. Where the choice is tract's own
//! ladder, the tier stays silent.
//!
//! The same measurement decides which of iscamd's own ops a plan runs ([`OwnOps`]), and,
//! when a map first runs on some number of threads, how its passes share them ([`Split`]).
//!
//! A model loaded under [`Policy::Stock`] gets neither the choice nor iscamd's own ops, so
//! that `iscamd bench --kernels tuned,stock` compares both in one run. tract asks the tiers
//! while it optimises a plan, on the thread that optimises it: `optimising_with` tells the
//! tier which model's policy and choice hold there.

/// Repeats `$body` once per listed index, `$i` a constant in each copy. A kernel's tile
/// indexed only by constants lives in registers at any optimisation level; a loop over it
/// keeps it in memory wherever loops are not unrolled (the tests' build, opt-level 1),
/// around every multiply-add.
#[cfg(target_arch = "x86_64")]
macro_rules! unrolled {
    ($i:ident in [$($n:literal)*] $body:block) => {{
        $({
            #[allow(non_upper_case_globals)]
            const $i: usize = $n;
            $body
        })*
    }};
}

#[cfg(target_arch = "x86_64")]
mod amx_i8;
#[cfg(target_arch = "x86_64")]
mod avx512_f32;
mod cache;
mod choice;
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
mod generic_steps;
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
mod headed;
#[cfg(target_arch = "aarch64")]
mod neon_i8;
mod ops;
#[cfg(test)]
mod own_kernel_tests;
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
mod registry;
mod settings;
mod split;
#[cfg(target_arch = "x86_64")]
mod vnni_i8;
#[cfg(target_arch = "x86_64")]
mod walk;

use std::cell::Cell;
use std::path::PathBuf;

use tract_onnx::prelude::DatumType;
use tract_onnx::tract_core::tract_linalg;

pub use cache::{cache_dir, cpu_model, instruction_sets, CachedChoice};
pub use choice::{candidates, Candidate, Choice};
pub use ops::{OwnOps, PoolIsa, OWN_OPS};
pub use settings::{EnvSettings, SettingError};
pub use split::{ChosenSplit, InFlight, Split, IN_FLIGHT_VAR};

/// The environment variable that selects the [`Policy`] at start-up: `tuned` or `stock`.
pub const POLICY_VAR: &str = "ISCAMD_KERNELS";

/// The environment variable that forces a [`Choice`] instead of measuring one, e.g.
/// `f32=fma,i32=avx512vnni+widest,without=im2col,max-pool=avx2` (`tract`: tract's own ladder).
pub const CHOICE_VAR: &str = "ISCAMD_MATMUL";

/// The name iscamd's tier goes by in tract's dispatch ladder.
pub const TIER_NAME: &str = "iscamd-measured";

#[cfg(target_arch = "aarch64")]
type OwnHeaded = headed::HeadedI8K4<neon_i8::Pairs>;
#[cfg(target_arch = "x86_64")]
type OwnHeaded = headed::HeadedI8K4<vnni_i8::RowSums>;

/// The packing of A of iscamd's own int8 kernel on this CPU architecture, if it has one.
pub fn own_headed_layout() -> Option<crate::model::tract::HeadedLayout> {
    #[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
    return Some(OwnHeaded::layout());
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    return None;
}

/// `format`'s layout when it is that packing, so that iscamd's packing ops can write it.
pub fn own_headed_packing(
    format: &dyn tract_linalg::mmm::MMMInputFormat,
) -> Option<crate::model::tract::HeadedLayout> {
    #[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
    let own = format.downcast_ref::<OwnHeaded>().is_some();
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let own = false;
    own_headed_layout().filter(|_| own)
}

/// The tiers of iscamd's own matrix kernels: never in tract's ladder (their `applies` is
/// false), measured as candidates like tract's tiers.
#[cfg(target_arch = "aarch64")]
pub const OWN_TIERS: &[&str] = &[neon_i8::TIER];
#[cfg(target_arch = "x86_64")]
pub const OWN_TIERS: &[&str] = &[vnni_i8::TIER, amx_i8::TIER, avx512_f32::TIER];
#[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
pub const OWN_TIERS: &[&str] = &[];

/// Whose kernels and ops a model's plans run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// The default: iscamd's own ops on every CPU — max-pooling, int8 packing and input
    /// quantisation, f32 ReLU folding (in `src/model/tract/`) — and the measured kernel choice.
    #[default]
    Tuned,
    /// tract as it ships.
    Stock,
}

impl Policy {
    /// The name [`Policy::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Tuned => "tuned",
            Policy::Stock => "stock",
        }
    }

    /// The policy named `tuned` or `stock`.
    pub fn parse(s: &str) -> Result<Policy, SettingError> {
        match s {
            "tuned" => Ok(Policy::Tuned),
            "stock" => Ok(Policy::Stock),
            _ => Err(SettingError::Policy(s.into())),
        }
    }
}

/// How a model's matrix kernels are chosen under [`Policy::Tuned`].
#[derive(Clone, Debug, PartialEq)]
pub enum Matmul {
    /// Measured when the model is first loaded on this CPU — among every candidate, or
    /// `only` these — and kept in `cache` (`None`: measured at every load).
    Measured {
        cache: Option<PathBuf>,
        only: Option<Vec<Candidate>>,
    },
    /// As given ([`CHOICE_VAR`]).
    Forced(Choice),
}

impl Default for Matmul {
    fn default() -> Self {
        Matmul::Measured {
            cache: cache_dir(),
            only: None,
        }
    }
}

/// The matrix kernels a model runs and how they were chosen, for `check`, logs and `bench`.
#[derive(Clone, Debug, PartialEq)]
pub enum Chosen {
    /// tract as it ships.
    Stock,
    Forced(Choice),
    /// Read from the cache file.
    Cached {
        choice: Choice,
        file: PathBuf,
    },
    /// Measured now: milliseconds per pass of each candidate, fastest first.
    Measured {
        choice: Choice,
        measured: Vec<(String, f64)>,
        seconds: f64,
    },
}

impl Chosen {
    pub fn choice(&self) -> Choice {
        match self {
            Chosen::Stock => Choice::default(),
            Chosen::Forced(choice)
            | Chosen::Cached { choice, .. }
            | Chosen::Measured { choice, .. } => *choice,
        }
    }
}

impl std::fmt::Display for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chosen::Stock => write!(f, "tract as it ships ({POLICY_VAR}=stock)"),
            Chosen::Forced(choice) => write!(f, "matrix kernels {choice}, forced by {CHOICE_VAR}"),
            Chosen::Cached { choice, file } => write!(
                f,
                "matrix kernels {choice}, measured on this CPU (cached in {})",
                file.display()
            ),
            Chosen::Measured {
                choice,
                measured,
                seconds,
            } => {
                let table: Vec<String> = measured
                    .iter()
                    .map(|(name, ms)| format!("{name} {ms:.1}"))
                    .collect();
                write!(
                    f,
                    "matrix kernels {choice}, measured in {seconds:.1} s (ms per pass: {})",
                    table.join(", ")
                )
            }
        }
    }
}

/// The policy and kernel choice of the plan a thread is optimising, and which accumulators
/// tract asked about while it did.
#[derive(Clone, Copy, Default)]
struct Optimising {
    policy: Policy,
    choice: Choice,
    asked: Accumulators,
}

/// The accumulators of a model's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accumulators {
    pub f32: bool,
    pub i32: bool,
}

impl Accumulators {
    pub fn list(self) -> Vec<DatumType> {
        [(self.f32, DatumType::F32), (self.i32, DatumType::I32)]
            .into_iter()
            .filter_map(|(asked, dt)| asked.then_some(dt))
            .collect()
    }
}

thread_local! {
    static OPTIMISING: Cell<Optimising> = Cell::new(Optimising::default());
}

/// Runs `optimise` (which builds a tract plan) with the tier answering for `policy` and
/// `choice`; returns its result and the accumulators tract asked the tier about.
pub(crate) fn optimising_with<T>(
    policy: Policy,
    choice: Choice,
    optimise: impl FnOnce() -> T,
) -> (T, Accumulators) {
    let before = OPTIMISING.replace(Optimising {
        policy,
        choice,
        asked: Accumulators::default(),
    });
    let result = optimise();
    let asked = OPTIMISING.replace(before).asked;
    (result, asked)
}

/// What iscamd's tier answers: the kernel of the model's candidate for this accumulator, or
/// `None` to leave the query to tract's ladder.
fn preferred(
    isa: &tract_linalg::isa::IsaSet,
    accumulator: DatumType,
    query: &tract_linalg::mmm::Query,
    suitable: &[tract_linalg::mmm::Suitable],
) -> Option<&'static str> {
    let mut now = OPTIMISING.get();
    match accumulator {
        DatumType::F32 => now.asked.f32 = true,
        DatumType::I32 => now.asked.i32 = true,
        _ => return None,
    }
    OPTIMISING.set(now);
    if now.policy == Policy::Stock {
        return None;
    }
    now.choice
        .for_accumulator(accumulator)?
        .answer(isa, accumulator, query, suitable)
}

/// Takes tract's AMX kernels out of its kernel pool for this process: tract's
/// `avx512amx_mmm_i32_16x16` (tract 0.23.9) faulted at random under load on a KVM Xeon
/// (SIGSEGV on a tile load from mapped memory, in the zoo's int8 tests), and tract's AMX
/// int8 kernels ran the models measured here at half the speed of its VNNI ones. Through
/// tract's own `TRACT_CPU_ISA` knob, as a value below the environment (a `TRACT_CPU_ISA`
/// set by the user wins); before tract first reads the machine's instruction sets, which it
/// does once: every iscamd path into tract's kernels calls this first.
/// Only on x86-64: tract refuses (panics on) a feature of another architecture.
pub fn leave_out_amx() {
    #[cfg(target_arch = "x86_64")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let (knob, edit) = ("TRACT_CPU_ISA", "-amx-int8,-amx-bf16");
            if let Err(e) = tract_onnx::tract_core::knobs::set_config_global(knob, edit) {
                tracing::warn!("tract's AMX kernels stay in: {e}");
            }
        });
    }
}

inventory::submit! {
    tract_linalg::mmm_tiers::MmmTier {
        // Every architecture: the choice is measured, not known in advance.
        arch: None,
        // Above every tract tier (0–8), so it is asked first.
        precedence: 32,
        name: TIER_NAME,
        applies: |_| true,
        preferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a CPU with AMX this takes tract's kernels (`avx512amx_…`) out of its pool;
    /// elsewhere there are none. iscamd's own stay, outside tract's ladder. (nextest runs
    /// each test in its own process, as the daemon is one.)
    #[test]
    fn tracts_amx_kernels_are_left_out() {
        leave_out_amx();
        let tracts_amx = |name: &str| name.starts_with("avx512amx");
        let dispatch = tract_linalg::MmmDispatch::native();
        let runnable: Vec<&str> = dispatch.runnable().iter().map(|k| k.name()).collect();
        assert!(!runnable.iter().any(|k| tracts_amx(k)), "{runnable:?}");
        assert!(!runnable.is_empty());
        let query =
            tract_linalg::mmm::Query::plain(DatumType::I32, Some(64), Some(144), Some(3025));
        let (pick, _) = optimising_with(Policy::Stock, Choice::default(), || dispatch.pick(&query));
        assert!(pick.is_some_and(|(k, _, _)| !k.name().contains("amx")));
    }

    #[test]
    fn policies_parse_and_reject_unknown_names() {
        assert_eq!(Policy::parse("stock"), Ok(Policy::Stock));
        assert_eq!(Policy::parse(Policy::Tuned.name()), Ok(Policy::Tuned));
        assert!(Policy::parse("fast")
            .unwrap_err()
            .to_string()
            .contains("tuned or stock"));
    }

    #[test]
    fn the_tier_is_in_tracts_ladder_on_this_machine() {
        assert!(tract_linalg::MmmDispatch::native()
            .tiers()
            .iter()
            .any(|t| t.name == TIER_NAME));
    }

    /// The tier answers with the model's candidate, records what it was asked, and stays
    /// silent under the stock policy and for tract's ladder.
    #[test]
    fn the_tier_answers_with_the_choice_being_optimised() {
        use tract_linalg::mmm::Query;
        let isa = tract_linalg::isa::native();
        let dispatch = tract_linalg::MmmDispatch::native();
        let query = Query::plain(DatumType::F32, Some(64), Some(144), Some(3025));
        let suitable = dispatch.suitable(&query);
        let generic = Choice::parse("f32=generic").unwrap();
        let ask = |policy, choice| {
            optimising_with(policy, choice, || {
                preferred(&isa, DatumType::F32, &query, &suitable)
            })
        };
        let (answer, asked) = ask(Policy::Tuned, generic);
        assert!(
            answer.is_some_and(|k| k.starts_with("generic_")),
            "{answer:?}"
        );
        assert_eq!(
            asked,
            Accumulators {
                f32: true,
                i32: false
            }
        );
        assert_eq!(ask(Policy::Stock, generic).0, None);
        assert_eq!(ask(Policy::Tuned, Choice::default()).0, None);
    }
}
