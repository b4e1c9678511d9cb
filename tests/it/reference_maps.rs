//! The CAM library against the PyTorch reference maps of ../shared/reference, fed the
//! reference input tensors (docs/maps.md).

use std::time::Instant;

use crate::common::{load, npy, pearson, reference_dir, reference_images, F32_MODEL};
use iscamd::cam::{self, CamParams, Explanation, Weighting};
use iscamd::model::{softmax, top_k, Classifier};
use tract_onnx::prelude::tract_ndarray::{Array3, Axis, Ix3, Ix4};

struct Case {
    name: String,
    x: Array3<f32>,
    logits: Vec<f32>,
    activations: Array3<f32>,
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn case(classifier: &Classifier, name: &str) -> Case {
    let input = npy(&reference_dir().join(format!("{name}.input.npy")))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let forward = classifier.forward(input.view()).unwrap();
    let activations = forward.activations.unwrap().index_axis_move(Axis(0), 0);
    let reference = npy(&reference_dir().join(format!("{name}.act.npy")))
        .into_dimensionality::<Ix3>()
        .unwrap();
    let max_diff = activations
        .iter()
        .zip(reference.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff < 1e-2,
        "{name}: activations differ from the reference by {max_diff}"
    );
    Case {
        name: name.to_string(),
        x: input.index_axis_move(Axis(0), 0),
        logits: forward.logits.index_axis(Axis(0), 0).to_vec(),
        activations,
    }
}

fn explain(classifier: &Classifier, case: &Case, params: &CamParams) -> Explanation {
    let class = top_k(&softmax(&case.logits), 1)[0];
    cam::explain(
        classifier,
        &case.x,
        &case.logits,
        case.activations.view(),
        class,
        params,
        threads(),
    )
    .unwrap()
}

/// Compares both weightings' maps and both score vectors with the reference files of
/// `spec`; returns the smaller of the two map correlations.
fn compare(case: &Case, e: &Explanation, spec: &str) -> f64 {
    let dir = reference_dir();
    let mut worst = 1.0f64;
    for weighting in [Weighting::Prob, Weighting::LogitSoftmax] {
        let ours = e.reweighted(case.activations.view(), weighting);
        let reference =
            npy(&dir.join(format!("{}.{spec}.{}.map.npy", case.name, weighting.name())));
        let r = pearson(ours.as_slice().unwrap(), reference.as_slice().unwrap());
        println!("{} {spec} {}: r = {r:.6}", case.name, weighting.name());
        assert!(
            r >= 0.999,
            "{} {spec} {}: r = {r} < 0.999",
            case.name,
            weighting.name()
        );
        worst = worst.min(r);
    }
    for (kind, ours, tolerance) in [
        ("prob", &e.prob_scores, 1e-4),
        ("logit_diff", &e.logit_diff_scores, 1e-3),
    ] {
        let reference = npy(&dir.join(format!("{}.{spec}.{kind}.scores.npy", case.name)));
        let diff = ours
            .iter()
            .zip(reference.iter())
            .map(|(a, &b)| (a - b as f64).abs())
            .fold(0.0, f64::max);
        println!(
            "{} {spec} {kind} scores: max |diff| = {diff:.2e}",
            case.name
        );
        assert!(
            diff <= tolerance,
            "{} {spec}: {kind} scores differ by {diff}",
            case.name
        );
    }
    worst
}

fn scorecam_matches_reference(names: &[String]) {
    let classifier = load(F32_MODEL);
    for name in names {
        let case = case(&classifier, name);
        let e = explain(
            &classifier,
            &case,
            &CamParams::new("scorecam", None, Some(0)).unwrap(),
        );
        compare(&case, &e, "scorecam");
    }
}

#[test]
fn scorecam_all_channels_matches_reference_on_one_image() {
    scorecam_matches_reference(&reference_images()[..1]);
}

#[test]
#[ignore = "heavy: scripts/test-heavy.sh"]
fn scorecam_all_channels_matches_reference_on_every_image() {
    scorecam_matches_reference(&reference_images()[1..]);
}

#[test]
fn reduced_iscam_top32_matches_reference() {
    let classifier = load(F32_MODEL);
    for name in reference_images() {
        let case = case(&classifier, &name);
        let e = explain(
            &classifier,
            &case,
            &CamParams::new("iscam", Some(4), Some(32)).unwrap(),
        );
        assert_eq!(e.channels_used.len(), 32);
        assert_eq!(e.passes, 128);
        compare(&case, &e, "iscam-n4-k32var");
    }
}

#[test]
#[ignore = "heavy: scripts/test-heavy.sh"]
fn iscam_n4_all_channels_matches_reference() {
    let classifier = load(F32_MODEL);
    let case = case(&classifier, "n01494475_hammerhead");
    let e = explain(
        &classifier,
        &case,
        &CamParams::new("iscam", Some(4), Some(0)).unwrap(),
    );
    compare(&case, &e, "iscam-n4");
}

/// Full IS-CAM (N=10, all channels) against the reference, and its cost against the
/// reduced-N default's, printed.
#[test]
#[ignore = "heavy: scripts/test-heavy.sh"]
fn iscam_n10_all_channels_matches_reference() {
    let classifier = load(F32_MODEL);
    let tench = case(&classifier, "n01440764_tench");
    let t0 = Instant::now();
    let full = explain(
        &classifier,
        &tench,
        &CamParams::new("iscam", Some(10), Some(0)).unwrap(),
    );
    let full_secs = t0.elapsed().as_secs_f64();
    compare(&tench, &full, "iscam-n10");

    let reduced_params = CamParams::new("iscam", None, None).unwrap();
    let t0 = Instant::now();
    let reduced = explain(&classifier, &tench, &reduced_params);
    let reduced_secs = t0.elapsed().as_secs_f64();
    println!(
        "reduced-N default (N={}, K={}) vs full IS-CAM on {}: {} vs {} passes ({:.1}x), {:.2} s vs {:.2} s ({:.1}x)",
        reduced_params.steps(),
        reduced_params.channels,
        tench.name,
        reduced.passes,
        full.passes,
        full.passes as f64 / reduced.passes as f64,
        reduced_secs,
        full_secs,
        full_secs / reduced_secs
    );
}

/// The reduced-N default against the reference maps of full IS-CAM (N=10, all channels).
#[test]
fn reduced_n_default_is_close_to_full_iscam() {
    let classifier = load(F32_MODEL);
    let reduced_params = CamParams::new("iscam", None, None).unwrap();
    let mut rs = Vec::new();
    for name in reference_images() {
        let case = case(&classifier, &name);
        let reduced = explain(&classifier, &case, &reduced_params);
        let full = npy(&reference_dir().join(format!("{name}.iscam-n10.prob.map.npy")));
        let r = pearson(reduced.map.as_slice().unwrap(), full.as_slice().unwrap());
        println!("{name}: reduced-N vs full IS-CAM r = {r:.4}");
        rs.push(r);
    }
    let mean = rs.iter().sum::<f64>() / rs.len() as f64;
    println!(
        "reduced-N vs full IS-CAM: mean r = {mean:.4} over {} images",
        rs.len()
    );
    assert!(
        mean > 0.5,
        "the reduced-N default no longer resembles full IS-CAM (mean r {mean})"
    );
}

#[test]
fn sscam_is_reproducible_per_seed() {
    let classifier = load(F32_MODEL);
    let case = case(&classifier, "n01514859_hen");
    let mut params = CamParams::new("sscam", Some(3), Some(8)).unwrap();
    let a = explain(&classifier, &case, &params);
    params.batch = 3; // batching and threading must not change the noise
    let b = explain(&classifier, &case, &params);
    assert_eq!(a.map, b.map, "same seed, same map");
    params.seed = 1;
    let c = explain(&classifier, &case, &params);
    assert_ne!(a.map, c.map, "another seed draws other noise");
}

/// SS-CAM's noise comes from our RNG, not PyTorch's: compare statistically. Our map must
/// agree with the two reference maps (seeds 0 and 1) about as well as they agree with each
/// other.
#[test]
fn sscam_agrees_with_reference_as_well_as_reference_seeds_agree() {
    sscam_agrees_with_reference(&[0]);
}

/// The same with two seeds of ours, which must also agree with each other as well as the
/// reference seeds do (4,480 passes).
#[test]
#[ignore = "heavy: scripts/test-heavy.sh"]
fn sscam_seeds_agree_with_each_other_and_the_reference() {
    sscam_agrees_with_reference(&[0, 1]);
}

fn sscam_agrees_with_reference(seeds: &[u64]) {
    let classifier = load(F32_MODEL);
    let name = "n01440764_tench";
    let case = case(&classifier, name);
    let dir = reference_dir();
    let mut params = CamParams::new("sscam", Some(35), Some(64)).unwrap();
    params.batch = 4;
    let ours: Vec<_> = seeds
        .iter()
        .map(|&seed| {
            params.seed = seed;
            explain(&classifier, &case, &params)
        })
        .collect();
    let slack = 0.05;
    for weighting in [Weighting::Prob, Weighting::LogitSoftmax] {
        let w = weighting.name();
        let refs: Vec<_> = (0..2)
            .map(|s| npy(&dir.join(format!("{name}.sscam-n35-k64var-s{s}.{w}.map.npy"))))
            .collect();
        let maps: Vec<_> = ours
            .iter()
            .map(|e| e.reweighted(case.activations.view(), weighting))
            .collect();
        let r_refs = pearson(refs[0].as_slice().unwrap(), refs[1].as_slice().unwrap());
        let cross: Vec<f64> = maps
            .iter()
            .flat_map(|m| {
                refs.iter()
                    .map(move |r| pearson(m.as_slice().unwrap(), r.as_slice().unwrap()))
            })
            .collect();
        let mean_cross = cross.iter().sum::<f64>() / cross.len() as f64;
        println!(
            "sscam {name} {w}: r(ref s0, ref s1) = {r_refs:.4}, r(ours, ref) = {cross:.4?}, \
             mean {mean_cross:.4}"
        );
        assert!(
            mean_cross >= r_refs - slack,
            "{w}: ours vs reference {mean_cross} below reference seeds' {r_refs}"
        );
        if let [a, b] = &maps[..] {
            let r_ours = pearson(a.as_slice().unwrap(), b.as_slice().unwrap());
            println!("sscam {name} {w}: r(ours s0, ours s1) = {r_ours:.4}");
            assert!(
                r_ours >= r_refs - slack,
                "{w}: our seeds agree less ({r_ours}) than the reference seeds ({r_refs})"
            );
        }
    }
}
