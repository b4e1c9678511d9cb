//! Which matrix kernels a model's plans run: per accumulator (f32 for float models, i32 for
//! int8 ones), one *candidate* — a tier of tract's dispatch ladder, as tract would ask it,
//! or that tier widened to the widest tile of its kernel family that the product fills.
//! Which candidate is fastest is measured per model on the machine at hand
//! (`model/tract/measure.rs`); nothing here knows a CPU by name.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use tract_onnx::prelude::DatumType;
use tract_onnx::tract_core::tract_linalg::{self, isa::IsaSet, mmm::Query, mmm::Suitable};

use super::{OwnOps, SettingError, OWN_TIERS, TIER_NAME};

/// One way to pick a kernel for a matrix product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The tract tier whose answer is taken.
    pub tier: &'static str,
    /// Whether that answer is widened to the widest tile of its family (`avx512vnni_mmm_i32_8x8`
    /// → `avx512vnni_mmm_i32_16x16`) that the product's M and N fill.
    pub widest: bool,
}

impl Candidate {
    /// The kernel this candidate runs for `query`, if its tier speaks for it.
    pub(super) fn answer(
        &self,
        isa: &IsaSet,
        accumulator: DatumType,
        query: &Query,
        suitable: &[Suitable],
    ) -> Option<&'static str> {
        let tier = tract_linalg::mmm_tiers::declared().find(|t| t.name == self.tier)?;
        let name = (tier.preferred)(isa, accumulator, query, suitable)?;
        match self.widest {
            false => Some(name),
            true => widest_in_family(name, query, suitable).or(Some(name)),
        }
    }

    /// The candidate named `tier` or `tier+widest`, if tract has that tier.
    pub fn parse(s: &str) -> Option<Candidate> {
        let (tier, widest) = match s.strip_suffix("+widest") {
            Some(t) => (t, true),
            None => (s, false),
        };
        let tier = tract_linalg::mmm_tiers::declared()
            .find(|t| t.name == tier && t.name != TIER_NAME)?
            .name;
        Some(Candidate { tier, widest })
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widest = if self.widest { "+widest" } else { "" };
        f.pad(&format!("{}{widest}", self.tier))
    }
}

/// The candidate per accumulator (`None` leaves the product to tract's own ladder), and
/// which of iscamd's own ops run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub f32: Option<Candidate>,
    pub i32: Option<Candidate>,
    pub ops: OwnOps,
}

impl Choice {
    pub(super) fn for_accumulator(&self, accumulator: DatumType) -> Option<Candidate> {
        match accumulator {
            DatumType::F32 => self.f32,
            DatumType::I32 => self.i32,
            _ => None,
        }
    }

    pub fn with(mut self, accumulator: DatumType, candidate: Option<Candidate>) -> Self {
        match accumulator {
            DatumType::F32 => self.f32 = candidate,
            DatumType::I32 => self.i32 = candidate,
            _ => {}
        }
        self
    }

    /// Parses `f32=fma,i32=avx512vnni+widest,without=im2col,max-pool=avx2` (`tract`: tract's
    /// ladder); keys left out keep their defaults.
    pub fn parse(s: &str) -> Result<Choice, SettingError> {
        let mut choice = Choice::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| SettingError::NotKeyValue(part.into()))?;
            if choice.ops.parse_part(key.trim(), value.trim())? {
                continue;
            }
            let accumulator = match key.trim() {
                "f32" => DatumType::F32,
                "i32" => DatumType::I32,
                other => return Err(SettingError::UnknownKey(other.into())),
            };
            let candidate = match value.trim() {
                "tract" => None,
                name => Some(
                    Candidate::parse(name).ok_or_else(|| SettingError::UnknownTier {
                        name: name.into(),
                        tiers: tier_names(),
                    })?,
                ),
            };
            choice = choice.with(accumulator, candidate);
        }
        Ok(choice)
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |c: Option<Candidate>| c.map_or("tract".to_string(), |c| c.to_string());
        write!(
            f,
            "f32={},i32={},{}",
            show(self.f32),
            show(self.i32),
            self.ops
        )
    }
}

/// The tiers tract has for this machine, by name.
fn tier_names() -> String {
    super::leave_out_amx();
    tract_linalg::MmmDispatch::native()
        .tiers()
        .iter()
        .map(|t| t.name)
        .filter(|&n| n != TIER_NAME)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Products that tell candidates apart: SqueezeNet's convolutions (64 × 144 × 3025, a
/// squeeze 16 × 128 × 729, the 1000-class head on 13 × 13), and a small one.
const PROBES: [(usize, usize, usize); 4] =
    [(64, 144, 3025), (16, 128, 729), (1000, 512, 169), (8, 8, 8)];

/// The candidates this machine can run for `accumulator`, tract's ladder excepted: every tier
/// that answers for it — tract's, and those of iscamd's own kernels ([`OWN_TIERS`]) — f16
/// and bf16 kernels excepted (they round f32 operands), and its widened form where that
/// picks other kernels. Candidates that pick the same kernels as
/// tract's ladder or an earlier candidate are left out.
pub fn candidates(accumulator: DatumType) -> Vec<Candidate> {
    super::leave_out_amx();
    let dispatch = tract_linalg::MmmDispatch::native();
    let isa = tract_linalg::isa::native();
    let queries: Vec<(Query, Vec<Suitable>)> = PROBES
        .iter()
        .map(|&(m, k, n)| {
            let q = Query::plain(accumulator, Some(m), Some(k), Some(n));
            let s = dispatch.suitable(&q);
            (q, s)
        })
        .collect();
    let answers = |c: &Candidate| -> Vec<Option<&'static str>> {
        queries
            .iter()
            .map(|(q, s)| c.answer(&isa, accumulator, q, s))
            .collect()
    };
    // tract's own ladder is always measured: a candidate that picks what it picks is not.
    let ladder: Vec<Option<&'static str>> = queries
        .iter()
        .map(|(q, _)| dispatch.pick(q).map(|(k, _, _)| interned(k.name())))
        .collect();
    let mut seen = HashSet::from([ladder]);
    let mut found = Vec::new();
    let own = tract_linalg::mmm_tiers::declared()
        .filter(|t| OWN_TIERS.contains(&t.name) && t.arch == isa.arch());
    let tiers = dispatch.tiers().iter().copied().chain(own);
    for tier in tiers.filter(|t| t.name != TIER_NAME) {
        for widest in [false, true] {
            let candidate = Candidate {
                tier: tier.name,
                widest,
            };
            let picks = answers(&candidate);
            // "f16" also catches bf16 kernels.
            let usable = picks.iter().any(Option::is_some)
                && !picks.iter().flatten().any(|k| k.contains("f16"));
            if usable && seen.insert(picks) {
                found.push(candidate);
            }
        }
    }
    found
}

/// The widest kernel of `name`'s family among `suitable` whose tile the product fills.
fn widest_in_family(name: &str, query: &Query, suitable: &[Suitable]) -> Option<&'static str> {
    let family = format!("{}_mmm_", name.split("_mmm_").next()?);
    let fills = |dim: Option<usize>, tile: usize| dim.is_none_or(|d| d >= tile);
    if query.n == Some(1) {
        return None;
    }
    suitable
        .iter()
        .filter(|(k, _, extractor)| {
            extractor.is_none()
                && k.name().starts_with(&family)
                && k.nr() > 1
                && fills(query.m, k.mr())
                && fills(query.n, k.nr())
        })
        .max_by_key(|(k, _, _)| k.mr() * k.nr())
        .map(|(k, _, _)| interned(k.name()))
}

/// A kernel name that lives as long as the process, as tract's tiers answer with one.
/// Bounded: there are as many as tract has kernels.
fn interned(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .expect("names poisoned");
    match names.get(name) {
        Some(n) => n,
        None => {
            let n: &'static str = Box::leak(name.to_string().into_boxed_str());
            names.insert(n);
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_the_same_way() {
        let generic = Candidate::parse("generic").expect("tract has a generic tier");
        let choice = Choice::parse("f32=generic, i32=tract").unwrap();
        assert_eq!(
            choice,
            Choice {
                f32: Some(generic),
                i32: None,
                ops: OwnOps::default(),
            }
        );
        assert_eq!(Choice::parse(&choice.to_string()).unwrap(), choice);
        assert!(Choice::parse("f32=nonesuch")
            .unwrap_err()
            .to_string()
            .contains("no such tier"));
        assert!(Choice::parse("f16=generic")
            .unwrap_err()
            .to_string()
            .contains("expected f32, i32"));
        assert!(Choice::parse(&format!("f32={TIER_NAME}")).is_err());
    }

    #[test]
    fn every_machine_has_candidates_and_the_generic_kernels_among_them() {
        for accumulator in [DatumType::F32, DatumType::I32] {
            let found = candidates(accumulator);
            assert!(
                found.iter().any(|c| c.tier == "generic"),
                "{accumulator:?}: {found:?}"
            );
            assert!(found.iter().all(|c| c.tier != TIER_NAME));
        }
    }
}
