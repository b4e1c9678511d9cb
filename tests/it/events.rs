//! Episodes on `<prefix>/<device>/event`, from a real daemon on a real mosquitto classifying
//! a laid-out image sequence with the real model: class A for 10 frames, then B, then A,
//! then flicker between B and A.

use std::time::Duration;

use crate::common::broker::{retained, Mosquitto, Observer, Received};
use crate::common::daemon::{topic, write_config_with_source};
use crate::common::process::Daemon;
use crate::common::streams::frames;
use serde_json::Value;

/// Two images SqueezeNet is sure of, and their classes.
const PANDA: (&str, u64) = ("n02510455_giant_panda", 388);
const MACAW: (&str, u64) = ("n01818515_macaw", 88);

const FRAMES: u64 = 50;

/// Each episode's id and messages, in the order they came.
fn episodes(events: &[Received]) -> Vec<(String, Vec<Value>)> {
    let mut episodes: Vec<(String, Vec<Value>)> = Vec::new();
    for e in events.iter().map(Received::json) {
        let id = e["id"].as_str().unwrap().to_string();
        match episodes.iter_mut().find(|(known, _)| *known == id) {
            Some((_, msgs)) => msgs.push(e),
            None => episodes.push((id, vec![e])),
        }
    }
    episodes
}

/// Every episode opened has ended.
fn all_ended(events: &[Received]) -> bool {
    episodes(events)
        .iter()
        .all(|(_, msgs)| msgs.iter().any(|m| m["type"] == "end"))
}

fn frame(v: &Value) -> u64 {
    v["frame"].as_u64().unwrap()
}

#[test]
fn a_b_a_gives_three_episodes_and_flicker_gives_none() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    // Panda ×10, macaw ×10, panda ×10, then macaw and panda in turn ×10.
    let mut segments = vec![(PANDA.0, 10), (MACAW.0, 10), (PANDA.0, 10)];
    segments.extend([(MACAW.0, 1), (PANDA.0, 1)].repeat(10));
    let frames = frames(dir.path(), &segments);
    let source = format!(
        "kind = \"images\"\npath = \"{}\"\nloop = false\nfps = 5",
        frames.display()
    );
    // No scheduled maps: the only maps are those of the episodes' peak frames.
    let extra = "[cam]\ninterval = \"0s\"\non_class_change = false\ncaption = false\n\
                 [events]\nmin_frames = 3\nend_frames = 3\n";
    let config = write_config_with_source(dir.path(), broker.port, &source, extra);
    let mut daemon = Daemon::start(&config, dir.path());
    // Every frame either classified or replaced unread (dropped) by a loaded machine: a
    // dropped frame is never processed, and the episodes below allow for drops.
    let stats = observer.wait_for(
        &topic("stats"),
        Duration::from_secs(90),
        "every frame processed or dropped",
        |m| {
            m.last().is_some_and(|s| {
                let count = |key: &str| s.json()[key].as_u64().unwrap_or(0);
                count("frames_processed") + count("frames_dropped") == FRAMES
            })
        },
    );
    let dropped = stats.last().unwrap().json()["frames_dropped"].as_u64();
    // Every frame taken in, every episode but the open one has ended: its end waits for
    // a map of its peak frame.
    let ends = |m: &[Received]| m.iter().filter(|e| e.json()["type"] == "end").count();
    observer.wait_for(&topic("event"), Duration::from_secs(60), "the ends", |m| {
        ends(m) + 1 >= episodes(m).len().max(3)
    });
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    // Every episode ends, the one still open when the daemon stops too.
    let events = observer.wait_for(&topic("event"), Duration::from_secs(10), "every end", |m| {
        all_ended(m)
    });
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let episodes = episodes(&events);
    let summary: Vec<(u64, Vec<String>)> = episodes
        .iter()
        .map(|(_, msgs)| {
            let class = msgs[0]["class"]["index"].as_u64().unwrap();
            let kinds = msgs
                .iter()
                .map(|m| format!("{} {}", m["type"], m["reason"]))
                .collect();
            (class, kinds)
        })
        .collect();
    let left = || vec!["\"new\" null".to_string(), "\"end\" \"left\"".to_string()];
    let stopped = vec![
        "\"new\" null".to_string(),
        "\"end\" \"stopped\"".to_string(),
    ];
    if dropped == Some(0) {
        assert_eq!(
            summary,
            [(PANDA.1, left()), (MACAW.1, left()), (PANDA.1, stopped)],
            "{events:#?}"
        );
    } else {
        // Frames dropped from the flicker may leave a run of one class, which rightly
        // opens an episode: the flicker's rule is checked only on every frame.
        assert_eq!(
            summary[..2],
            [(PANDA.1, left()), (MACAW.1, left())],
            "{events:#?}"
        );
        let (last, between) = summary[2..].split_last().expect("a third episode");
        assert_eq!(last.1, stopped, "{events:#?}");
        assert!(
            between.iter().all(|(_, kinds)| *kinds == left()),
            "{events:#?}"
        );
    }

    let heatmaps = observer.on(&topic("heatmap"));
    for (n, (id, msgs)) in episodes.iter().enumerate() {
        let (new, end) = (&msgs[0], &msgs[1]);
        assert_eq!(new["start"], end["start"], "{id}");
        assert_eq!(new["frames"], 3, "opens on the third frame: {new}");
        if dropped == Some(0) {
            // 1–10, 11–20, 21–50 (the flicker keeps the third open), each decided on
            // its `min_frames`th frame and, when left, `end_frames` after its last.
            let (first, last) = [(1, 10), (11, 20), (21, 50)][n];
            assert_eq!((frame(&end["start"]), frame(&end["last"])), (first, last));
            assert_eq!(frame(new), first + 2, "{new}");
            if end["reason"] == "left" {
                assert_eq!(frame(end), last + 3, "{end}");
            }
        }
        if end["reason"] == "stopped" {
            assert_eq!(
                (&end["heatmap_seq"], &end["snapshot"]),
                (&Value::Null, &false.into())
            );
            continue;
        }
        // Explained at its peak frame.
        assert_eq!(end["snapshot"], true, "{end}");
        let seq = end["heatmap_seq"].as_u64().expect("a heatmap of the peak");
        let map = heatmaps
            .iter()
            .map(Received::json)
            .find(|h| h["seq"] == seq)
            .unwrap_or_else(|| panic!("no heatmap {seq}"));
        assert_eq!(map["frame"], end["peak"]["frame"], "{map}");
        assert_eq!(map["class"]["index"], end["class"]["index"], "{map}");
        assert!(map["passes"].as_u64().unwrap() > 0);
    }

    // The snapshots of the ends that left: the overlay as a JPEG, the last one retained.
    let snapshots = observer.on(&topic("event/snapshot"));
    assert_eq!(snapshots.len(), episodes.len() - 1);
    for s in &snapshots {
        let jpeg = image::load_from_memory_with_format(&s.payload, image::ImageFormat::Jpeg)
            .expect("a JPEG");
        assert_eq!(jpeg.width(), 200, "[mqtt] heatmap_image_width");
        let band = crate::common::caption::find_band(&jpeg.to_rgb8());
        assert!(band.is_none(), "[cam] caption = false: {band:?}");
    }
    assert!(
        retained(broker.port, &topic("event/snapshot")).is_some(),
        "the last snapshot is retained"
    );
}

/// An episode that ends near the stream's last frame, while the CAM worker is busy with
/// the previous episode's map until after that frame, gets its own map: it waits for the
/// worker, not for a frame that never comes.
#[test]
fn an_end_near_the_last_frame_gets_its_map_while_no_frame_comes() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    // The macaw's episode ends two seconds before the last frame, after the panda's; a
    // full Score-CAM of 96 channels (seconds) keeps the worker busy with the panda's map
    // past the last frame. Frames dropped under load still leave three of each run.
    let segments = [(PANDA.0, 6), (MACAW.0, 6), (PANDA.0, 8)];
    let frames = frames(dir.path(), &segments);
    let source = format!(
        "kind = \"images\"\npath = \"{}\"\nloop = false\nfps = 4",
        frames.display()
    );
    let extra = "[cam]\nmethod = \"scorecam\"\nchannels = 96\ninterval = \"0s\"\n\
                 on_class_change = false\ncaption = false\n\
                 [events]\nmin_frames = 3\nend_frames = 3\n";
    let config = write_config_with_source(dir.path(), broker.port, &source, extra);
    let mut daemon = Daemon::start(&config, dir.path());
    let ends = |m: &[Received]| -> Vec<Value> {
        m.iter()
            .map(Received::json)
            .filter(|e| e["type"] == "end")
            .collect()
    };
    let events = observer.wait_for(&topic("event"), Duration::from_secs(90), "two ends", |m| {
        ends(m).len() >= 2
    });
    let ends = ends(&events);
    let classes: Vec<_> = ends.iter().map(|e| e["class"]["index"].clone()).collect();
    assert_eq!(classes, [PANDA.1, MACAW.1], "{events:#?}");
    for end in &ends {
        assert_eq!(end["reason"], "left", "{end}");
        assert_eq!(
            end["snapshot"], true,
            "explained before the daemon stops: {end}"
        );
        assert!(end["heatmap_seq"].is_u64(), "{end}");
    }
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}
