//! Which of iscamd's own ops a model's plans run, and in which compiled form: part of the
//! measured [`super::Choice`]. Each op replaces a step of tract's plan with a faster one on
//! the CPUs it was written on; on another CPU tract's own step may be faster, so an op is
//! left out when the measurement says so, and max-pooling runs the instruction set that
//! measures fastest rather than the widest one the CPU has.

use std::fmt;

use super::SettingError;

/// iscamd's ops, by the names logs, `check` and the choice's text use.
pub const OWN_OPS: [&str; 14] = [
    "max-pool",
    "im2col",
    "float-im2col",
    "row-packing",
    "relu-fold",
    "quantize",
    "requantize",
    "requantized-product",
    "depthwise",
    "lookup-table",
    "spatial-merge",
    "row-terms",
    "constant-chains",
    "hard-swish",
];

/// The instruction set iscamd's max-pooling is compiled for (one loop, compiled once per
/// set; the CPU picks none of them by itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolIsa {
    /// The architecture's baseline: SSE2 on x86-64, NEON on aarch64.
    Baseline,
    Avx2,
    /// AVX-512 F and BW (byte and word maxima for int8 tensors).
    Avx512,
}

impl PoolIsa {
    /// The forms this CPU can run, baseline first.
    pub fn available() -> Vec<PoolIsa> {
        // Only x86 adds forms: elsewhere the list stays as it starts.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut forms = vec![PoolIsa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                forms.push(PoolIsa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                forms.push(PoolIsa::Avx512);
            }
        }
        forms
    }

    /// The widest form this CPU has: what runs until something is measured.
    pub fn widest() -> PoolIsa {
        *PoolIsa::available()
            .last()
            .expect("the baseline is always there")
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolIsa::Baseline => "baseline",
            PoolIsa::Avx2 => "avx2",
            PoolIsa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Result<PoolIsa, SettingError> {
        let available = PoolIsa::available();
        available
            .iter()
            .copied()
            .find(|isa| isa.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = available.iter().map(|i| i.name()).collect();
                SettingError::UnknownPool {
                    name: s.into(),
                    here: names.join(", "),
                }
            })
    }
}

/// The own-op part of a choice. The default — every op, max-pooling's widest form — is
/// what runs when nothing is measured or forced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnOps {
    /// Bit i set: [`OWN_OPS`]`[i]` is left to tract.
    left_out: u16,
    /// `None`: [`PoolIsa::widest`].
    pool: Option<PoolIsa>,
}

impl OwnOps {
    /// Whether the op named `name` (one of [`OWN_OPS`]) goes into the plan.
    pub fn runs(&self, name: &str) -> bool {
        index(name).is_none_or(|i| self.left_out & (1 << i) == 0)
    }

    /// These ops with `name` left out of plans (`false`) or put back.
    pub fn with(mut self, name: &str, runs: bool) -> Self {
        if let Some(i) = index(name) {
            match runs {
                true => self.left_out &= !(1 << i),
                false => self.left_out |= 1 << i,
            }
        }
        self
    }

    pub fn pool(&self) -> PoolIsa {
        self.pool.unwrap_or_else(PoolIsa::widest)
    }

    pub fn with_pool(mut self, isa: PoolIsa) -> Self {
        self.pool = (isa != PoolIsa::widest()).then_some(isa);
        self
    }

    /// Reads one `key=value` of a choice's text if it is about own ops: `without=im2col+relu-fold`
    /// (`none`: every op) or `max-pool=avx2`. `Ok(false)`: another key.
    pub(super) fn parse_part(&mut self, key: &str, value: &str) -> Result<bool, SettingError> {
        match key {
            "without" => {
                let mut ops = OwnOps {
                    pool: self.pool,
                    ..OwnOps::default()
                };
                for name in value.split('+').map(str::trim).filter(|n| *n != "none") {
                    if index(name).is_none() {
                        return Err(SettingError::UnknownOp {
                            name: name.into(),
                            ops: OWN_OPS.join(", "),
                        });
                    }
                    ops = ops.with(name, false);
                }
                *self = ops;
                Ok(true)
            }
            "max-pool" => {
                *self = self.with_pool(PoolIsa::parse(value)?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl fmt::Display for OwnOps {
    /// `without=none,max-pool=avx512`: every key, so that the text says all that runs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let left_out: Vec<&str> = OWN_OPS.into_iter().filter(|n| !self.runs(n)).collect();
        let left_out = match left_out.is_empty() {
            true => "none".to_string(),
            false => left_out.join("+"),
        };
        write!(f, "without={left_out},max-pool={}", self.pool().name())
    }
}

fn index(name: &str) -> Option<usize> {
    OWN_OPS.iter().position(|&n| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_left_out_and_put_back_by_name() {
        let ops = OwnOps::default()
            .with("im2col", false)
            .with("quantize", false);
        assert!(!ops.runs("im2col") && !ops.runs("quantize") && ops.runs("max-pool"));
        assert!(ops.with("im2col", true).runs("im2col"));
        assert_eq!(
            ops.to_string().split(',').next(),
            Some("without=im2col+quantize")
        );
    }

    #[test]
    fn the_text_reads_back_and_unknown_names_are_refused() {
        let mut read = OwnOps::default();
        let ops = OwnOps::default()
            .with("relu-fold", false)
            .with_pool(PoolIsa::Baseline);
        for part in ops.to_string().split(',') {
            let (key, value) = part.split_once('=').unwrap();
            assert_eq!(read.parse_part(key, value), Ok(true));
        }
        assert_eq!(read, ops);
        assert!(read
            .parse_part("without", "conv")
            .unwrap_err()
            .to_string()
            .contains("no such op"));
        assert!(read
            .parse_part("max-pool", "sve")
            .unwrap_err()
            .to_string()
            .contains("not a form"));
        assert_eq!(read.parse_part("f32", "fma"), Ok(false));
    }

    #[test]
    fn the_default_pools_with_the_widest_form() {
        assert_eq!(OwnOps::default().pool(), PoolIsa::widest());
        assert_eq!(
            OwnOps::default().with_pool(PoolIsa::widest()),
            OwnOps::default()
        );
    }
}
