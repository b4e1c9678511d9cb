//! The measured choice of tract's matrix kernels: it never settles on a deliberately slow
//! candidate, it is kept per CPU and model, reused at the next start, and measured again
//! when the model changes. Speed itself is not asserted (no timings in tests); the check
//! is which candidate wins against kernels several times slower.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::{model_path, F32_MODEL};
use iscamd::model::kernels::{Candidate, Choice, Chosen, InFlight, Matmul};
use iscamd::model::{BackendOptions, Classifier, ModelOptions, TractOptions};

/// The f32 model with its kernel choice measured among `only` (and tract's ladder), kept in
/// `cache`, its passes in flight as `in_flight` says.
fn load_measured(cache: Option<&Path>, only: Vec<Candidate>, in_flight: InFlight) -> Classifier {
    Classifier::load(&ModelOptions {
        path: model_path(F32_MODEL),
        backend: BackendOptions::Tract(TractOptions {
            matmul: Matmul::Measured {
                cache: cache.map(Path::to_owned),
                only: Some(only),
            },
            in_flight,
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("model loads")
}

/// The measurement's choice and table; fails unless the kernels were measured at this load.
fn measured_choice(classifier: &Classifier) -> (Choice, Vec<(String, f64)>) {
    match classifier.matrix_kernels() {
        Some(Chosen::Measured {
            choice, measured, ..
        }) => (choice, measured),
        other => panic!("measured: {other:?}"),
    }
}

#[test]
fn the_generic_kernels_are_measured_and_never_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let generic = Candidate::parse("generic").expect("tract has a generic tier");
    let classifier = load_measured(Some(dir.path()), vec![generic], InFlight::Measured);
    let (choice, measured) = measured_choice(&classifier);
    eprintln!("{measured:?}");
    let labels: Vec<&str> = measured.iter().map(|(l, _)| l.as_str()).collect();
    assert!(
        labels.contains(&"f32:generic") && labels.contains(&"f32:tract"),
        "{labels:?}"
    );
    assert_eq!(
        choice.f32, None,
        "tract's ladder, not the generic kernels: {measured:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "one cache entry"
    );
}

/// iscamd's own ops are measured after the kernels: the plan with every op, without each
/// op that replaced something, and with max-pooling in each form this CPU has; the choice
/// names what runs, and the plan runs just that.
#[test]
fn own_ops_are_measured_one_by_one() {
    use iscamd::model::kernels::{PoolIsa, OWN_OPS};
    let classifier = load_measured(None, vec![], InFlight::Measured);
    let (choice, measured) = measured_choice(&classifier);
    eprintln!("{choice}: {measured:?}");
    let labels: Vec<&str> = measured.iter().map(|(l, _)| l.as_str()).collect();
    assert!(labels.contains(&"ops:every"), "{labels:?}");
    for name in ["max-pool", "relu-fold"] {
        let without = format!("ops:without {name}");
        assert!(labels.contains(&without.as_str()), "{labels:?}");
    }
    for isa in PoolIsa::available()
        .into_iter()
        .filter(|&i| i != PoolIsa::widest())
    {
        let form = format!("ops:max-pool {}", isa.name());
        assert!(labels.contains(&form.as_str()), "{labels:?}");
    }
    let swaps = classifier.op_swaps().expect("tuned");
    for name in OWN_OPS {
        assert_eq!(
            swaps.get(name).is_some(),
            choice.ops.runs(name),
            "{name}: the plan runs what the choice says ({choice}; {swaps})"
        );
    }
}

/// How a map's passes share two threads is measured once per model and thread count (two
/// in flight against one pass on two threads), kept in the model's cache entry and read from
/// it at the next load; a forced number of passes in flight is taken as it is.
#[test]
fn passes_in_flight_are_measured_cached_and_forced() {
    use iscamd::model::kernels::Split;
    let dir = tempfile::tempdir().unwrap();
    let open = |in_flight| load_measured(Some(dir.path()), vec![], in_flight);
    let measured = open(InFlight::Measured).split(2);
    eprintln!("{measured}");
    assert_eq!(measured.how, "measured");
    let candidates: Vec<&str> = measured.measured.iter().map(|(c, _)| c.as_str()).collect();
    assert!(
        candidates.contains(&"2x1") && candidates.contains(&"1x2"),
        "{candidates:?}"
    );
    assert!(Split::candidates(2).contains(&measured.split));
    let cached = open(InFlight::Measured).split(2);
    assert!(cached.how.contains("cached in"), "{cached}");
    assert_eq!(cached.split, measured.split);
    let forced = open(InFlight::Forced(1)).split(2);
    assert_eq!(forced.split, Split::with_in_flight(2, 1), "{forced}");
    assert_eq!(open(InFlight::Measured).split(1).split, Split::passes(1));
}

/// `iscamd check` of a copy of the model, with the cache in a fresh directory: measured at
/// the first start, read from the cache at the second, measured again once the model file
/// changes (a metadata entry appended).
#[test]
fn the_choice_is_cached_per_model_and_measured_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(model_path(F32_MODEL), &model).unwrap();
    let config = dir.path().join("iscamd.toml");
    let text = format!(
        "[source]\nkind = \"pattern\"\n[model]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1\n",
        model.display()
    );
    std::fs::write(&config, text).unwrap();
    let check = || {
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .args(["check", "--config", config.to_str().unwrap()])
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env_remove("STATE_DIRECTORY")
            .env_remove("ISCAMD_MATMUL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let model_line = stdout
            .lines()
            .find(|l| l.contains("model:"))
            .unwrap_or_else(|| panic!("no model line: {stdout}"))
            .to_string();
        eprintln!("{:.1} s: {model_line}", t0.elapsed().as_secs_f64());
        model_line
    };
    assert!(check().contains("measured in"));
    let cached = check();
    assert!(
        cached.contains("measured on this CPU (cached in"),
        "{cached}"
    );
    append_metadata(&model);
    assert!(
        check().contains("measured in"),
        "a changed model is measured again"
    );
    let entries = std::fs::read_dir(dir.path().join("cache/iscamd/kernels")).unwrap();
    assert_eq!(entries.count(), 2, "one entry per model");
}

/// Appends a `metadata_props` entry (ONNX ModelProto field 14) to the protobuf: still the
/// same model to every reader, another file to the cache.
fn append_metadata(model: &Path) {
    use std::io::Write;
    let entry = [0x0a, 0x01, b'k', 0x12, 0x01, b'v'];
    let mut bytes = vec![(14 << 3) | 2, entry.len() as u8];
    bytes.extend(entry);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(model)
        .unwrap();
    file.write_all(&bytes).unwrap();
}

/// iscamd's own matrix kernels compute what tract's do: the shipped int8 model with each
/// int8 kernel forced gives the logits of tract's own kernels to the bit, and the f32 model
/// with the f32 kernel gives them up to the order of the sums (1e-5 of the largest), on
/// real photographs. A kernel this CPU cannot run (no AVX-512 VNNI, no AMX) is said, not
/// skipped silently: the plan then runs tract's kernels, and the comparison is trivially
/// equal.
#[test]
fn own_kernels_give_the_logits_of_tracts() {
    use crate::common::{images_dir, F32_MODEL, INT8_MODEL};
    use iscamd::model::kernels::OWN_TIERS;
    let open = |model: &str, kernels: &str| {
        Classifier::load(&ModelOptions {
            path: model_path(model),
            backend: BackendOptions::Tract(TractOptions {
                matmul: Matmul::Forced(Choice::parse(kernels).unwrap()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("model loads")
    };
    let frames: Vec<image::RgbImage> = ["n01440764_tench", "n03325584_feather_boa"]
        .iter()
        .map(|name| {
            image::open(images_dir().join(format!("{name}.JPEG")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let logits = |classifier: &Classifier| -> Vec<Vec<f32>> {
        frames
            .iter()
            .map(|frame| {
                let input = classifier
                    .preprocess()
                    .tensor(frame)
                    .insert_axis(tract_onnx::prelude::tract_ndarray::Axis(0));
                classifier
                    .forward(input.view())
                    .unwrap()
                    .logits
                    .iter()
                    .copied()
                    .collect()
            })
            .collect()
    };
    for tier in OWN_TIERS {
        let (model, accumulator, tolerance) = match tier.ends_with("f32") {
            true => (F32_MODEL, "f32", 1e-5),
            false => (INT8_MODEL, "i32", 0.0),
        };
        let tracts = logits(&open(model, &format!("{accumulator}=tract")));
        let ours = open(model, &format!("{accumulator}={tier}"));
        let profile = ours
            .profile(&frames[0], 1)
            .unwrap()
            .expect("tract profiles");
        let kernels: Vec<&str> = profile
            .iter()
            .flat_map(|op| &op.by_node)
            .filter(|node| node.info.contains("with [iscamd_"))
            .map(|node| node.name.as_str())
            .collect();
        if kernels.is_empty() {
            eprintln!("{tier}: not run by this CPU; tract's kernels ran instead");
        } else {
            eprintln!("{tier}: runs {} products", kernels.len());
        }
        let ours = logits(&ours);
        let largest = tracts.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let differ = (ours.iter().flatten().zip(tracts.iter().flatten()))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{tier}: logits differ by {differ:e} of {largest}");
        assert!(
            largest > 0.0 && differ <= tolerance * largest,
            "{tier}: {differ}"
        );
    }
}
