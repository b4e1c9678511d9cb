//! Explanation health: the daemon's measure of whether its maps still follow its model.

use iscamd::analysis::Analysis;
use iscamd::cam::health::{self, UNFAITHFUL_AT_MOST};
use iscamd::cam::CamParams;
use iscamd::model::Classifier;
use iscamd::source::decode_image;

use crate::common::{image, load_path, model_path, F32_MODEL};

const IMAGES: [&str; 2] = ["n01440764_tench", "n01514859_hen"];

/// Mean health score of the default map over [`IMAGES`].
fn mean_score(classifier: &Classifier) -> f64 {
    let params = CamParams::default();
    let mut total = 0.0;
    for (i, stem) in IMAGES.iter().enumerate() {
        let analysis = Analysis::of_frame(classifier, decode_image(&image(stem)).unwrap()).unwrap();
        let e = analysis.explain(classifier, None, &params, 2).unwrap();
        let p = analysis.probabilities[e.class];
        let s = health::measure(classifier, &analysis.input, p, &e.map, e.class, i as u64).unwrap();
        println!("{stem}: class {} p {p:.3}: {s:?}", e.class);
        total += s.score;
    }
    total / IMAGES.len() as f64
}

/// The model at `path` with `layer`'s weights all set to their mean: a head that lost
/// its weights (every class reads the features alike), as a broken quantization scale
/// leaves it.
pub fn flattened(path: &std::path::Path, weights: &str, out: &std::path::Path) {
    use prost::Message as _;
    let mut proto = tract_onnx::pb::ModelProto::decode(&*std::fs::read(path).unwrap()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == weights)
        .unwrap();
    assert_eq!(t.data_type, 1, "float weights");
    let mut v: Vec<f32> = if t.raw_data.is_empty() {
        std::mem::take(&mut t.float_data)
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    v.iter_mut().for_each(|x| *x = mean);
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    t.float_data.clear();
    std::fs::write(out, proto.encode_to_vec()).unwrap();
}

/// The maps of the model as trained beat their shuffled selves; with a head that lost its
/// weights they cannot. (A head redrawn at random is another matter: its maps follow that
/// head's own decision and still beat the control — docs/maps.md, "Explanation health".)
#[test]
fn maps_of_the_model_pass_and_a_head_without_weights_fails() {
    let path = model_path(F32_MODEL);
    let trained = mean_score(&load_path(&path));
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("flat-head.onnx");
    flattened(&path, "conv_final/weight", &flat);
    let lost = mean_score(&load_path(&flat));
    println!("mean score: trained {trained:.3}, head without weights {lost:.3}");
    assert!(trained > UNFAITHFUL_AT_MOST, "trained: {trained}");
    assert!(lost <= UNFAITHFUL_AT_MOST, "head without weights: {lost}");
}

/// The daemon measures its maps' health: `health` (retained, `iscamd.health/1`), the
/// stats' `faithfulness` block and the Prometheus gauges; a reload to a model whose head
/// lost its weights makes the state `unfaithful`, in a message that says it changed.
#[test]
fn a_reload_to_a_head_without_weights_turns_the_health_unfaithful() {
    use crate::common::broker::{free_port, Mosquitto, Observer};
    use crate::common::daemon::{hup, topic, wait_for_log, write_config_for};
    use crate::common::process::Daemon;
    use crate::metrics::{sample, scrape};
    use std::time::Duration;

    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(model_path(F32_MODEL), &model).unwrap();
    let metrics = free_port();
    let extra = format!(
        "[cam]\ninterval = \"1s\"\non_class_change = false\nmethod = \"iscam:n=1,k=16\"\n\
         health_every = 1\nhealth_window = 2\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
    );
    let tench = image("n01440764_tench");
    let config = write_config_for(dir.path(), broker.port, &model, &tench, &extra);
    let mut daemon = Daemon::start(&config, dir.path());
    let schemas = crate::common::schemas::Schemas::get();
    let state = |m: &crate::common::broker::Received| m.json()["state"].as_str().map(String::from);

    let healthy = observer.wait_for(
        &topic("health"),
        Duration::from_secs(120),
        "faithful",
        |m| m.iter().any(|h| state(h).as_deref() == Some("faithful")),
    );
    for h in &healthy {
        schemas.check(&h.json()).unwrap();
    }
    let stats = observer.wait_for(&topic("stats"), Duration::from_secs(10), "stats", |m| {
        m.iter()
            .any(|s| s.json()["faithfulness"]["state"] == "faithful")
    });
    schemas.check(&stats.last().unwrap().json()).unwrap();
    let text = scrape(metrics);
    assert_eq!(sample(&text, "iscamd_explanation_faithful"), 1.0);
    let faithfulness = sample(&text, "iscamd_explanation_faithfulness");
    assert!(faithfulness > UNFAITHFUL_AT_MOST, "{faithfulness}");

    let staged = dir.path().join("model.onnx.new");
    flattened(&model_path(F32_MODEL), "conv_final/weight", &staged);
    std::fs::rename(&staged, &model).unwrap();
    hup(&daemon);
    wait_for_log(&daemon, "reloaded:", Duration::from_secs(60));
    let all = observer.wait_for(
        &topic("health"),
        Duration::from_secs(120),
        "unfaithful",
        |m| m.iter().any(|h| state(h).as_deref() == Some("unfaithful")),
    );
    let turned = all
        .iter()
        .find(|h| state(h).as_deref() == Some("unfaithful"))
        .unwrap()
        .json();
    assert_eq!(turned["changed"], true, "the event: {turned}");
    assert!(
        turned["window_mean"].as_f64().unwrap() <= UNFAITHFUL_AT_MOST,
        "{turned}"
    );
    schemas.check(&turned).unwrap();
    // The gauge as the message left it; samples after it (one a second here) may move the
    // state on by the time of a single scrape, so it is polled.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let unfaithful =
        std::iter::repeat_with(|| sample(&scrape(metrics), "iscamd_explanation_faithful"))
            .inspect(|_| std::thread::sleep(Duration::from_millis(50)))
            .find(|&v| v == 0.0 || std::time::Instant::now() > deadline);
    assert_eq!(unfaithful, Some(0.0));
    let log = wait_for_log(&daemon, "explanations unfaithful", Duration::from_secs(5));
    assert!(log.contains("WARN"), "{log}");
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}
