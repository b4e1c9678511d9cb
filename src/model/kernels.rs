//! How tract runs iscamd's models, where iscamd measured better than tract's defaults: which
//! of its matrix kernels, and (see [`Policy`]) whether iscamd's own ops replace some of its
//! steps: max-pooling, int8 packing and input quantisation, f32 ReLU folding.
//!
//! tract ranks its matrix kernels through dispatch *tiers* that any linked crate may add
//! (`tract_linalg::mmm_tiers`, collected with `inventory`); the highest tier with an opinion
//! picks the kernel when a plan is optimised. iscamd adds one tier, above tract's own, that
//! speaks only on AMD Zen 4 — the CPU it was measured on — and only for two choices:
//!
//! - **f32** matrix products go to tract's 256-bit FMA kernels, as its `fma` tier would pick
//!   them, instead of its AVX-512 ones: Zen 4 executes 512-bit operations in two halves, and
//!   SqueezeNet's float convolutions run faster on the 256-bit kernels (docs/benchmarks.md, "Speed").
//!   Before this tier the only way there was `TRACT_CPU_ISA=-avx512f`, which also takes away
//!   the AVX-512 VNNI int8 kernels, for the whole process.
//! - **i32** (int8 models) products of at least 16×16 go to the 16×16 zmm VNNI kernel, which
//!   tract keeps for cores it probes as having two 512-bit FMA ports; on Zen 4 it still beats
//!   the 8×8 ymm kernel on these convolutions. Left to tract when the user sets
//!   `TRACT_AVX512_FMA_UNITS`.
//!
//! Everything else falls through to tract's tiers. A model loaded under [`Policy::Stock`]
//! (`ModelOptions::kernels`) gets neither the tier nor iscamd's own ops, so that
//! `iscamd bench --kernels tuned,stock` compares both in one run. tract asks the tiers while
//! it optimises a plan, on the thread that optimises it: [`optimising_with`] tells the tier
//! which model's policy holds there.

use std::cell::Cell;

use tract_onnx::tract_core::tract_linalg;

/// The environment variable that selects the [`Policy`] at start-up: `tuned` or `stock`.
pub const POLICY_VAR: &str = "ISCAMD_KERNELS";

/// tract's knob for the number of 512-bit FMA ports it assumes; when set, the int8 kernel
/// choice is the user's.
pub const FMA_UNITS_KNOB: &str = "TRACT_AVX512_FMA_UNITS";

/// The name iscamd's tier goes by in tract's dispatch ladder.
pub const TIER_NAME: &str = "iscamd-zen4";

/// Whose kernels and ops a model's plans run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// The default: iscamd's own ops on every CPU — max-pooling, int8 packing and input
    /// quantisation, f32 ReLU folding (in `src/model/tract/`) — and its kernel tier where it applies.
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
    pub fn parse(s: &str) -> Result<Policy, String> {
        match s {
            "tuned" => Ok(Policy::Tuned),
            "stock" => Ok(Policy::Stock),
            _ => Err(format!(
                "unknown kernel policy {s:?}: expected tuned or stock"
            )),
        }
    }

    /// The policy [`POLICY_VAR`] names, [`Policy::Tuned`] when it is unset.
    pub fn from_env() -> Result<Policy, String> {
        match std::env::var(POLICY_VAR) {
            Ok(v) => Policy::parse(v.trim()).map_err(|e| format!("{POLICY_VAR}: {e}")),
            Err(_) => Ok(Policy::Tuned),
        }
    }
}

thread_local! {
    /// The policy of the plan this thread is optimising.
    static OPTIMISING: Cell<Policy> = const { Cell::new(Policy::Tuned) };
}

/// Runs `optimise` (which builds a tract plan) with the tier answering for `policy`.
pub(crate) fn optimising_with<T>(policy: Policy, optimise: impl FnOnce() -> T) -> T {
    let before = OPTIMISING.replace(policy);
    let result = optimise();
    OPTIMISING.set(before);
    result
}

/// Which matrix kernels plans built under `policy` use, for `iscamd check`, logs and
/// benchmarks.
pub fn matrix_kernels(policy: Policy) -> String {
    if policy == Policy::Stock {
        return format!("tract as it ships ({POLICY_VAR}=stock)");
    }
    if !tier_is_active() {
        "tract's matrix kernels".to_string()
    } else if std::env::var_os(FMA_UNITS_KNOB).is_some() {
        format!("{TIER_NAME} matrix kernels: f32 on 256-bit FMA, int8 as {FMA_UNITS_KNOB} says")
    } else {
        format!("{TIER_NAME} matrix kernels: f32 on 256-bit FMA, int8 on 16×16 VNNI")
    }
}

/// Whether iscamd's tier is in this process's dispatch ladder (it is on AMD Zen 4).
pub fn tier_is_active() -> bool {
    tract_linalg::MmmDispatch::native()
        .tiers()
        .iter()
        .any(|t| t.name == TIER_NAME)
}

/// What iscamd's tier answers: `Some(kernel name)`, or `None` to leave the query to tract.
#[cfg(target_arch = "x86_64")]
fn preferred(
    isa: &tract_linalg::isa::IsaSet,
    accumulator: tract_onnx::prelude::DatumType,
    query: &tract_linalg::mmm::Query,
    suitable: &[tract_linalg::mmm::Suitable],
) -> Option<&'static str> {
    use tract_onnx::prelude::DatumType;
    if OPTIMISING.get() == Policy::Stock {
        return None;
    }
    match accumulator {
        DatumType::F32 => {
            let fma = tract_linalg::mmm_tiers::declared()
                .find(|t| t.arch == Some(tract_linalg::isa::Arch::X86_64) && t.name == "fma")?;
            (fma.preferred)(isa, accumulator, query, suitable)
        }
        DatumType::I32 if std::env::var_os(FMA_UNITS_KNOB).is_some() => None,
        DatumType::I32 => int8_kernel(query.m, query.n),
        _ => None,
    }
}

/// The VNNI kernel for an int8 product of `m`×`n` (unknown dims count as large), as tract
/// picks on two-port cores.
#[cfg(target_arch = "x86_64")]
fn int8_kernel(m: Option<usize>, n: Option<usize>) -> Option<&'static str> {
    let big = |d: Option<usize>| d.is_none_or(|v| v >= 16);
    match n {
        Some(1) => None,
        _ if big(m) && big(n) => Some("avx512vnni_mmm_i32_16x16"),
        _ => Some("avx512vnni_mmm_i32_8x8"),
    }
}

#[cfg(target_arch = "x86_64")]
inventory::submit! {
    tract_linalg::mmm_tiers::MmmTier {
        arch: Some(tract_linalg::isa::Arch::X86_64),
        // Above tract's x86 tiers (1–8), so it is asked first.
        precedence: 32,
        name: TIER_NAME,
        applies: |isa| {
            use tract_linalg::isa::Isa;
            is_zen4() && isa.has(Isa::X86_64Avx512f) && isa.has(Isa::X86_64Fma)
        },
        preferred,
    }
}

/// AMD family 19h with AVX-512: Zen 4 (Zen 3, the same family, has no AVX-512).
#[cfg(target_arch = "x86_64")]
fn is_zen4() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID leaves 0 and 1 exist on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
    let vendor: Vec<u8> = [vendor.ebx, vendor.edx, vendor.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature >> 20) & 0xff)
    } else {
        base
    };
    vendor == b"AuthenticAMD" && family == 0x19 && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_products_of_a_full_tile_take_the_wide_kernel() {
        assert_eq!(
            int8_kernel(Some(64), Some(3025)),
            Some("avx512vnni_mmm_i32_16x16")
        );
        assert_eq!(int8_kernel(None, None), Some("avx512vnni_mmm_i32_16x16"));
        assert_eq!(
            int8_kernel(Some(8), Some(3025)),
            Some("avx512vnni_mmm_i32_8x8")
        );
        assert_eq!(int8_kernel(Some(64), Some(1)), None);
    }

    #[test]
    fn policies_parse_and_reject_unknown_names() {
        assert_eq!(Policy::parse("stock"), Ok(Policy::Stock));
        assert_eq!(Policy::parse(Policy::Tuned.name()), Ok(Policy::Tuned));
        assert!(Policy::parse("fast")
            .unwrap_err()
            .contains("tuned or stock"));
    }

    /// What the tier answers, whichever CPU runs the test: f32 as tract's fma tier would (a
    /// 256-bit FMA kernel this CPU can run), int8 on the VNNI kernels.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_tier_answers_f32_with_fma_kernels_and_int8_with_vnni_ones() {
        use tract_linalg::mmm::Query;
        use tract_onnx::prelude::DatumType;
        let isa = tract_linalg::isa::native();
        let dispatch = tract_linalg::MmmDispatch::native();
        // fire2's expand3x3 convolution at 227 px: 64 × 144 times 144 × 3025.
        let query = Query::plain(DatumType::F32, Some(64), Some(144), Some(3025));
        let suitable = dispatch.suitable(&query);
        let f32_kernel = preferred(&isa, DatumType::F32, &query, &suitable).expect("an answer");
        assert!(f32_kernel.starts_with("fma_"), "{f32_kernel}");
        assert!(
            runnable(dispatch, f32_kernel),
            "{f32_kernel} does not run here"
        );
        let query = Query::plain(DatumType::I32, Some(64), Some(144), Some(3025));
        let suitable = dispatch.suitable(&query);
        let answer = preferred(&isa, DatumType::I32, &query, &suitable);
        if std::env::var_os(FMA_UNITS_KNOB).is_none() {
            assert_eq!(answer, Some("avx512vnni_mmm_i32_16x16"));
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn runnable(dispatch: &tract_linalg::MmmDispatch, name: &str) -> bool {
        dispatch.runnable().iter().any(|k| k.name() == name)
    }

    /// On a Zen 4 the tier is in tract's ladder and answers f32 with an FMA kernel; elsewhere
    /// it is not in the ladder at all. Either way this names every kernel it can answer with,
    /// so a tract upgrade that renames one fails here rather than silently falling through.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_tier_is_active_exactly_on_zen4_and_names_kernels_tract_has() {
        use tract_linalg::mmm::Query;
        use tract_onnx::prelude::DatumType;
        assert!(
            tract_linalg::mmm_tiers::declared().any(|t| t.name == TIER_NAME),
            "the tier is not linked into tract's registry"
        );
        assert_eq!(tier_is_active(), is_zen4());
        let dispatch = tract_linalg::MmmDispatch::native();
        let tracts_names: Vec<String> = tract_linalg::mmm_routines::declared()
            .map(|r| (r.make)().name().to_string())
            .collect();
        for name in ["avx512vnni_mmm_i32_16x16", "avx512vnni_mmm_i32_8x8"] {
            assert!(
                tracts_names.iter().any(|n| n == name),
                "tract has no {name}"
            );
        }
        assert!(tract_linalg::mmm_tiers::declared().any(|t| t.name == "fma"));
        if is_zen4() {
            // fire2's expand3x3 convolution at 227 px: 64 × 144 times 144 × 3025.
            let query = Query::plain(DatumType::F32, Some(64), Some(144), Some(3025));
            let picked = dispatch.pick(&query).expect("a kernel").0;
            assert!(picked.name().starts_with("fma_"), "{}", picked.name());
            let query = Query::plain(DatumType::I32, Some(64), Some(144), Some(3025));
            let picked = dispatch.pick(&query).expect("a kernel").0;
            assert_eq!(picked.name(), "avx512vnni_mmm_i32_16x16");
        }
    }
}
