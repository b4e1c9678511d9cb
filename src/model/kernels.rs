//! Which of tract's matrix kernels run, where iscamd knows better than tract's defaults.
//!
//! tract reads its kernel knobs from the environment once, on first use, for the whole
//! process; so this edits the environment, and only before anything else runs.

use std::sync::OnceLock;

/// tract's knob for the number of 512-bit FMA ports it assumes (`1` or `2`).
pub const FMA_UNITS_KNOB: &str = "TRACT_AVX512_FMA_UNITS";

/// What [`tune`] decided, for logs and benchmark headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// tract's own choice: nothing applies to this CPU.
    TractDefault,
    /// The user set the knob; iscamd leaves it alone.
    UserSet(String),
    /// iscamd set the knob to this value, for the reason given.
    Tuned(&'static str, &'static str),
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelChoice::TractDefault => write!(f, "tract's default kernels"),
            KernelChoice::UserSet(v) => write!(f, "{FMA_UNITS_KNOB}={v} (set by you)"),
            KernelChoice::Tuned(v, why) => write!(f, "{FMA_UNITS_KNOB}={v} (set by iscamd: {why})"),
        }
    }
}

/// The decision alone, from what the CPU is and what the user set.
///
/// On x86 with AVX-512 VNNI, tract takes its 16×16 zmm int8 kernel only where it probes two
/// 512-bit FMA ports, and its 8×8 ymm kernel otherwise. AMD's Zen 4 has one (it runs 512-bit
/// operations in two halves), yet there the 16×16 kernel runs SqueezeNet's int8 convolutions
/// 1.1–1.2× faster than the 8×8 one (README, "Speed": three alternating runs). On Intel's
/// one-port client cores tract measured the opposite, so only AMD gets the change.
pub fn decide(user_value: Option<String>, amd: bool, avx512_vnni: bool) -> KernelChoice {
    match user_value {
        Some(v) => KernelChoice::UserSet(v),
        None if amd && avx512_vnni => KernelChoice::Tuned(
            "2",
            "AMD CPU with AVX-512 VNNI: the 16×16 int8 kernel is faster",
        ),
        None => KernelChoice::TractDefault,
    }
}

static CHOICE: OnceLock<KernelChoice> = OnceLock::new();

/// Applies [`decide`] to this machine, once. Call it first thing in `main`, before any
/// thread starts (it sets an environment variable) and before tract is first used.
pub fn tune() -> &'static KernelChoice {
    CHOICE.get_or_init(|| {
        let user_value = std::env::var(FMA_UNITS_KNOB).ok();
        let choice = decide(user_value, is_amd(), has_avx512_vnni());
        if let KernelChoice::Tuned(value, _) = &choice {
            std::env::set_var(FMA_UNITS_KNOB, value);
        }
        choice
    })
}

/// What [`tune`] decided, if it ran in this process.
pub fn choice() -> Option<&'static KernelChoice> {
    CHOICE.get()
}

#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let id = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn is_amd() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512_vnni() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_amd_with_vnni_is_tuned_and_a_user_setting_wins() {
        assert_eq!(decide(None, false, true), KernelChoice::TractDefault);
        assert_eq!(decide(None, true, false), KernelChoice::TractDefault);
        assert!(matches!(
            decide(None, true, true),
            KernelChoice::Tuned("2", _)
        ));
        assert_eq!(
            decide(Some("1".into()), true, true),
            KernelChoice::UserSet("1".into())
        );
    }
}
