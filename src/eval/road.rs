//! ROAD (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation Strategy for
//! Attribution Methods"): remove a share of the pixels — the most relevant first (MoRF) or
//! the least relevant first (LeRF) — and fill them by *noisy linear imputation*, so that the
//! removal leaves no edge or flat patch for the model to react to.
//!
//! Each removed pixel becomes the weighted mean of its 8 neighbours (1/6 for the direct
//! ones, 1/12 for the diagonal ones; neighbours outside the image drop out of the mean),
//! which is a sparse linear system over all removed pixels at once, plus Gaussian noise.
//! The system is solved matrix-free by conjugate gradients on the pixel grid, the three
//! colour planes together: it is a symmetric, diagonally dominant 3×3 stencil, and a
//! general sparse solver would first have to assemble the matrix that the stencil is.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::Result;
use crate::model::ndarray::Array3;

/// The removal shares of the paper and of pytorch-grad-cam's `ROADCombined`.
pub const PERCENTAGES: [u32; 9] = [10, 20, 30, 40, 50, 60, 70, 80, 90];

/// The imputation noise of the paper (standard deviation, in the model's input units).
pub const NOISE: f32 = 0.01;

/// Neighbour offsets (row, column) and weights; opposite offsets share a weight, which
/// keeps the system symmetric.
const NEIGHBOURS: [(isize, isize, f32); 8] = [
    (-1, -1, 1.0 / 12.0),
    (-1, 0, 1.0 / 6.0),
    (-1, 1, 1.0 / 12.0),
    (0, -1, 1.0 / 6.0),
    (0, 1, 1.0 / 6.0),
    (1, -1, 1.0 / 12.0),
    (1, 0, 1.0 / 6.0),
    (1, 1, 1.0 / 12.0),
];

/// Conjugate gradients stop when every plane's residual is below this share of its
/// right-hand side: far below the imputation noise.
const TOLERANCE: f32 = 1e-5;
const MAX_ITERATIONS: usize = 5000;

/// ROAD scores of one map: `p_c` after each removal, by share removed.
#[derive(Clone, Debug, PartialEq)]
pub struct Road {
    pub percentages: Vec<u32>,
    /// The most relevant pixels removed first: lower is better.
    pub morf: Vec<f64>,
    /// The least relevant pixels removed first: higher is better.
    pub lerf: Vec<f64>,
}

impl Road {
    pub fn morf_mean(&self) -> f64 {
        mean(&self.morf)
    }

    pub fn lerf_mean(&self) -> f64 {
        mean(&self.lerf)
    }

    /// pytorch-grad-cam's `ROADCombined`: (LeRF − MoRF) / 2, higher is better.
    pub fn combined(&self) -> f64 {
        (self.lerf_mean() - self.morf_mean()) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Scores a map by ROAD. `order` is the input's pixels from the most to the least salient
/// ([`super::metrics::ranking`]); `x` the preprocessed input `[3,H,W]`. Each removal's
/// noise comes from `seed` and its place in the run, so a run repeats exactly. `score`
/// returns `p_c` for each input (all in one call, to be batched).
pub fn road(
    x: &Array3<f32>,
    order: &[usize],
    percentages: &[u32],
    noise: f32,
    seed: u64,
    threads: usize,
    score: impl FnOnce(Vec<Array3<f32>>) -> Result<Vec<f64>>,
) -> Result<Road> {
    let pixels = order.len();
    let removals: Vec<(usize, &[usize])> = [false, true]
        .iter()
        .flat_map(|&least_first| {
            percentages.iter().map(move |&p| {
                let count = (p as usize * pixels + 50) / 100;
                let removed = if least_first {
                    &order[pixels - count..]
                } else {
                    &order[..count]
                };
                (usize::from(least_first), removed)
            })
        })
        .collect();
    let imputed = parallel_map(&removals, threads, |i, (_, removed)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x70ad_u64 << 16) ^ i as u64);
        impute(x, removed, noise, &mut rng)
    });
    let scores = score(imputed)?;
    let n = percentages.len();
    Ok(Road {
        percentages: percentages.to_vec(),
        morf: scores[..n].to_vec(),
        lerf: scores[n..].to_vec(),
    })
}

fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, item)| f(c * chunk + i, item))
                        .collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("imputation thread panicked"))
            .collect()
    })
}

/// `x` with the pixels `removed` (row-major indices) filled by noisy linear imputation.
pub fn impute(x: &Array3<f32>, removed: &[usize], noise: f32, rng: &mut ChaCha8Rng) -> Array3<f32> {
    let mut out = x.clone();
    if removed.is_empty() {
        return out;
    }
    let system = System::new(x, removed);
    let solution = system.solve();
    let normal = Normal::new(0.0, noise.max(0.0)).expect("a finite, non-negative σ");
    let (_, _, w) = x.dim();
    for (i, &p) in removed.iter().enumerate() {
        for (c, value) in solution[i].iter().enumerate() {
            out[[c, p / w, p % w]] = value + normal.sample(rng);
        }
    }
    out
}

/// The imputation system over the removed pixels: for each, `d·u − Σ w·u_neighbour = b`,
/// where `d` is the weight of its neighbours inside the image and `b` the weighted sum of
/// its kept neighbours. Unknowns are numbered in the order given; slot `n` is a constant
/// zero that stands for "not an unknown", so the stencil needs no branch.
struct System {
    neighbours: Vec<[u32; 8]>,
    diagonal: Vec<f32>,
    rhs: Vec<[f32; 3]>,
    /// The original values: the starting point, already right in mean and texture scale.
    start: Vec<[f32; 3]>,
}

impl System {
    fn new(x: &Array3<f32>, removed: &[usize]) -> Self {
        let (channels, h, w) = x.dim();
        assert_eq!(channels, 3, "ROAD imputes three colour planes");
        let n = removed.len();
        let mut unknown = vec![u32::MAX; h * w];
        for (i, &p) in removed.iter().enumerate() {
            unknown[p] = i as u32;
        }
        let value = |p: usize| [0, 1, 2].map(|c| x[[c, p / w, p % w]]);
        let mut system = System {
            neighbours: Vec::with_capacity(n),
            diagonal: Vec::with_capacity(n),
            rhs: Vec::with_capacity(n),
            start: removed.iter().map(|&p| value(p)).collect(),
        };
        for &p in removed {
            let (r, c) = ((p / w) as isize, (p % w) as isize);
            let mut slots = [n as u32; 8];
            let (mut d, mut b) = (0.0, [0.0f32; 3]);
            for (slot, &(dr, dc, weight)) in slots.iter_mut().zip(&NEIGHBOURS) {
                let (nr, nc) = (r + dr, c + dc);
                if nr < 0 || nc < 0 || nr >= h as isize || nc >= w as isize {
                    continue;
                }
                d += weight;
                let q = nr as usize * w + nc as usize;
                match unknown[q] {
                    u32::MAX => {
                        let v = value(q);
                        (0..3).for_each(|ch| b[ch] += weight * v[ch]);
                    }
                    j => *slot = j,
                }
            }
            system.neighbours.push(slots);
            system.diagonal.push(d);
            system.rhs.push(b);
        }
        system
    }

    /// `y = A·v` (v has the extra zero slot at the end).
    fn apply(&self, v: &[[f32; 3]], y: &mut [[f32; 3]]) {
        for (i, (slots, &d)) in self.neighbours.iter().zip(&self.diagonal).enumerate() {
            let mut acc = v[i].map(|a| d * a);
            for (&j, &(_, _, weight)) in slots.iter().zip(&NEIGHBOURS) {
                let u = v[j as usize];
                (0..3).for_each(|c| acc[c] -= weight * u[c]);
            }
            y[i] = acc;
        }
    }

    /// Conjugate gradients, one per plane, sharing the stencil pass.
    fn solve(&self) -> Vec<[f32; 3]> {
        let n = self.rhs.len();
        let mut x = self.start.clone();
        x.push([0.0; 3]);
        let mut ax = vec![[0.0f32; 3]; n];
        self.apply(&x, &mut ax);
        let mut r: Vec<[f32; 3]> = (0..n)
            .map(|i| [0, 1, 2].map(|c| self.rhs[i][c] - ax[i][c]))
            .collect();
        let mut p = r.clone();
        p.push([0.0; 3]);
        let dot = |a: &[[f32; 3]], b: &[[f32; 3]]| {
            let mut s = [0.0f64; 3];
            for (u, v) in a.iter().zip(b) {
                (0..3).for_each(|c| s[c] += u[c] as f64 * v[c] as f64);
            }
            s
        };
        let limit = dot(&self.rhs, &self.rhs).map(|b| b * (TOLERANCE as f64).powi(2));
        let mut rr = dot(&r, &r);
        let mut ap = vec![[0.0f32; 3]; n];
        for _ in 0..MAX_ITERATIONS {
            if (0..3).all(|c| rr[c] <= limit[c]) {
                break;
            }
            self.apply(&p, &mut ap);
            let pap = dot(&p[..n], &ap);
            let alpha = [0, 1, 2].map(|c| if pap[c] > 0.0 { rr[c] / pap[c] } else { 0.0 });
            for i in 0..n {
                for c in 0..3 {
                    x[i][c] += (alpha[c] * p[i][c] as f64) as f32;
                    r[i][c] -= (alpha[c] * ap[i][c] as f64) as f32;
                }
            }
            let next = dot(&r, &r);
            let beta = [0, 1, 2].map(|c| if rr[c] > 0.0 { next[c] / rr[c] } else { 0.0 });
            for i in 0..n {
                for c in 0..3 {
                    p[i][c] = r[i][c] + (beta[c] * p[i][c] as f64) as f32;
                }
            }
            rr = next;
        }
        x.truncate(n);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    /// A linear ramp is its own neighbours' weighted mean everywhere inside the image, so
    /// imputation without noise must give it back exactly.
    #[test]
    fn a_ramp_is_imputed_exactly() {
        let x = Array3::from_shape_fn((3, 20, 24), |(c, r, col)| {
            c as f32 + 0.3 * r as f32 - 0.2 * col as f32
        });
        let removed: Vec<usize> = (0..20 * 24)
            .filter(|p| {
                let (r, c) = (p / 24, p % 24);
                (3..17).contains(&r) && (2..20).contains(&c) && (r + c) % 5 != 0
            })
            .collect();
        let mut hidden = x.clone();
        for &p in &removed {
            (0..3).for_each(|c| hidden[[c, p / 24, p % 24]] = 100.0);
        }
        let filled = impute(&hidden, &removed, 0.0, &mut rng());
        let worst = filled
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "max |error| {worst}");
    }

    /// One removed pixel has a closed form: the weighted mean of its neighbours, renormalised
    /// over those inside the image (here a corner: 2 direct, 1 diagonal).
    #[test]
    fn a_corner_pixel_is_the_mean_of_its_neighbours() {
        let mut x = Array3::<f32>::zeros((3, 4, 4));
        x[[0, 0, 1]] = 6.0;
        x[[0, 1, 0]] = 3.0;
        x[[0, 1, 1]] = 12.0;
        x[[0, 0, 0]] = -50.0;
        let filled = impute(&x, &[0], 0.0, &mut rng());
        let expected = (6.0 / 6.0 + 3.0 / 6.0 + 12.0 / 12.0) / (2.0 / 6.0 + 1.0 / 12.0);
        assert!((filled[[0, 0, 0]] - expected).abs() < 1e-4);
        assert_eq!(filled[[0, 1, 1]], 12.0, "kept pixels are untouched");
    }

    #[test]
    fn noise_has_the_asked_spread_and_repeats_by_seed() {
        let x = Array3::<f32>::zeros((3, 64, 64));
        let removed: Vec<usize> = (0..64 * 64).step_by(2).collect();
        let a = impute(&x, &removed, 0.5, &mut rng());
        let b = impute(&x, &removed, 0.5, &mut rng());
        assert_eq!(a, b);
        let values: Vec<f32> = removed.iter().map(|&p| a[[1, p / 64, p % 64]]).collect();
        let sd = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
        assert!((sd - 0.5).abs() < 0.03, "σ {sd}");
    }

    /// A "model" that scores how much of the top-left quarter's checkerboard is intact: a
    /// map that ranks the quarter first must do well on MoRF and LeRF, its mirror badly.
    /// (A flat patch would not do: imputation restores it, which is ROAD's point.)
    #[test]
    fn morf_and_lerf_favour_the_map_on_the_pixels_that_matter() {
        let (h, w) = (16, 16);
        let board = |r: usize, c: usize| if (r + c).is_multiple_of(2) { 1.0 } else { -1.0 };
        let x = Array3::from_shape_fn(
            (3, h, w),
            |(_, r, c)| {
                if r < 8 && c < 8 {
                    board(r, c)
                } else {
                    0.0
                }
            },
        );
        let quarter = |inputs: Vec<Array3<f32>>| -> Result<Vec<f64>> {
            Ok(inputs
                .iter()
                .map(|x| {
                    let kept = (0..8)
                        .flat_map(|r| (0..8).map(move |c| (r, c)))
                        .filter(|&(r, c)| (x[[0, r, c]] - board(r, c)).abs() < 0.1)
                        .count();
                    kept as f64 / 64.0
                })
                .collect())
        };
        let mut good: Vec<usize> = (0..h * w).collect();
        good.sort_by_key(|&p| (p / w >= 8 || p % w >= 8, p));
        let bad: Vec<usize> = good.iter().rev().copied().collect();
        let score = |order: &[usize]| road(&x, order, &PERCENTAGES, 0.0, 1, 2, quarter).unwrap();
        let (g, b) = (score(&good), score(&bad));
        assert_eq!(
            g.morf[0],
            1.0 - 26.0 / 64.0,
            "10 % of 256 = 26 pixels, all in the quarter"
        );
        assert_eq!(g.lerf[0], 1.0, "the 26 least relevant are outside it");
        assert!(g.combined() > 0.2 && b.combined() < -0.2, "{g:?}\n{b:?}");
    }
}
