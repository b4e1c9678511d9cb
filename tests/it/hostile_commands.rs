//! Commands meant to tie the daemon up, against a real mosquitto: maps over the cost
//! budget, floods of explain requests, oversized retained commands, ambiguous payloads.

use std::time::{Duration, Instant};

use crate::common::broker::{retained, Received};
use crate::common::daemon::*;

fn result_for<'a>(results: &'a [Received], id: &str) -> Option<&'a Received> {
    results.iter().find(|r| r.json()["id"] == id)
}

#[test]
fn maps_over_the_budget_are_refused_or_abandoned_and_the_next_one_runs() {
    let extra = "commands_per_second = 100\n[cam]\ninterval = \"0s\"\non_class_change = false\n\
                 max_passes = 20000\nmax_time = \"1s\"\n";
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, extra);
    first_prediction(&observer);

    // 1000 steps on all 512 channels: refused before it starts, naming the budget.
    let sent = Instant::now();
    observer.publish(
        &topic("cmd"),
        r#"{"id":"huge","cmd":"explain","method":"sscam","steps":1000,"channels":0}"#,
    );
    // 35 noisy masks on 512 channels: 17,920 passes, within max_passes, far over 1 s.
    observer.publish(
        &topic("cmd"),
        r#"{"id":"slow","cmd":"explain","method":"sscam","channels":0}"#,
    );
    observer.publish(
        &topic("cmd"),
        r#"{"id":"next","cmd":"explain","steps":1,"channels":4}"#,
    );
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(60),
        "three results",
        |m| m.len() >= 3,
    );
    let huge = result_for(&results, "huge")
        .expect("a result for huge")
        .json();
    assert_eq!(huge["ok"], false, "{huge}");
    let error = huge["error"].as_str().unwrap();
    assert!(
        error.contains("cam.max_passes") && error.contains("512000") && error.contains("20000"),
        "{error}"
    );

    let slow = result_for(&results, "slow").expect("a result for slow");
    let json = slow.json();
    assert_eq!(json["ok"], false, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains("cam.max_time") && error.contains("abandoned"),
        "{error}"
    );
    let took = slow.at - sent;
    eprintln!("the 17,920-pass map was abandoned after {took:?}: {error}");
    assert!(
        took < Duration::from_secs(30),
        "abandoned only after {took:?}"
    );

    let next = result_for(&results, "next")
        .expect("a result for next")
        .json();
    assert_eq!(
        next["ok"], true,
        "the map after an abandoned one is made: {next}"
    );
    assert!(daemon.terminate().success());
}

/// A map far longer than the daemon's stop grace, in flight when SIGTERM comes: abandoned
/// at once, its command answered, and no stage left behind.
#[test]
fn a_map_in_flight_when_the_daemon_stops_is_answered_and_abandoned() {
    let extra = "[cam]\ninterval = \"0s\"\non_class_change = false\nmax_passes = 20000\n";
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, extra);
    first_prediction(&observer);
    // 17,920 passes: minutes of work.
    observer.publish(
        &topic("cmd"),
        r#"{"id":"slow","cmd":"explain","method":"sscam","channels":0}"#,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(10),
        "a result",
        |m| result_for(m, "slow").is_some(),
    );
    let slow = result_for(&results, "slow").unwrap().json();
    assert_eq!(slow["ok"], false, "{slow}");
    let error = slow["error"].as_str().unwrap();
    assert!(error.contains("the daemon is stopping"), "{error}");
    let log = daemon.log_text();
    assert!(!log.contains("did not stop within"), "{log}");
}

#[test]
fn fifty_explains_in_ten_seconds_are_answered_and_the_schedule_keeps_its_interval() {
    // Cheap maps (4 passes), so that the schedule's interval is longer than two maps even
    // in a debug build.
    let extra = "commands_per_second = 100\n[cam]\nmethod = \"iscam:k=4\"\ninterval = \"2s\"\n\
                 on_class_change = false\n";
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, extra);
    first_prediction(&observer);
    let start = Instant::now();
    for i in 0..50 {
        observer.publish(&topic("cmd"), format!(r#"{{"id":"e{i}","cmd":"explain"}}"#));
        std::thread::sleep(Duration::from_millis(200));
    }
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(60),
        "an answer to each of 50 explains",
        |m| m.len() >= 50,
    );
    let busy = results
        .iter()
        .filter(|r| {
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("busy"))
        })
        .count();
    let ok = results.iter().filter(|r| r.json()["ok"] == true).count();
    assert_eq!(ok + busy, 50, "every explain is made or refused as busy");
    // The maps made during the 10 s of the flood, and those of them not asked for.
    let flood = start..start + Duration::from_secs(10);
    let maps: Vec<_> = observer
        .on(&topic("heatmap"))
        .iter()
        .filter(|m| flood.contains(&m.at))
        .map(Received::json)
        .filter(|h| h["fresh"] == true)
        .collect();
    let scheduled = maps.iter().filter(|h| h["request_id"].is_null()).count();
    eprintln!(
        "50 explains in 10 s: {ok} made, {busy} busy; {} maps, {scheduled} of them \
         scheduled",
        maps.len()
    );
    // The schedule is due every 2 s and, while requests wait, takes the next turn: it
    // starts when the map then running ends, at the next frame (5 per second). So a
    // scheduled map starts at most an interval, a map and a frame after the one before —
    // the worker made maps all through the flood, so a map took 10 s / their number —
    // less the one that straddles either end of the 10 s.
    let period = 2.0 + 10.0 / maps.len().max(1) as f64 + 0.2;
    let due = (10.0 / period).floor() as usize;
    assert!(
        scheduled + 1 >= due,
        "{scheduled} scheduled of {} maps in 10 s at a 2 s interval (at least {} due)",
        maps.len(),
        due.saturating_sub(1)
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_retained_5_mib_command_costs_at_most_one_reconnect() {
    // The observer does not subscribe to cmd: it would choke on the payload itself.
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        &topic("prediction"),
        5,
        "[mqtt.qos]\nprediction = 1\n[cam]\ninterval = \"0s\"\n",
    );
    first_prediction(&observer);
    let (client, pump) = big_publisher(broker.port);
    let pad = "x".repeat(5 << 20);
    let payload = format!(r#"{{"cmd":"republish","pad":"{pad}"}}"#);
    client
        .publish(topic("cmd"), rumqttc::QoS::AtLeastOnce, true, payload)
        .unwrap();
    let sent = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    client.disconnect().unwrap();
    pump.join().unwrap();
    std::thread::sleep(Duration::from_secs(30) - sent.elapsed());
    let window = sent..sent + Duration::from_secs(30);
    let received: Vec<Received> = observer
        .on(&topic("prediction"))
        .into_iter()
        .filter(|m| window.contains(&m.at))
        .collect();
    // Predictions flow on throughout: the longest silence is at most one reconnect's.
    let arrivals: Vec<Instant> = std::iter::once(sent)
        .chain(received.iter().map(|m| m.at))
        .chain(std::iter::once(sent + Duration::from_secs(30)))
        .collect();
    let silence = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let log = daemon.log_text();
    let reconnects = log.matches("lost the broker").count();
    eprintln!(
        "retained 5 MiB command: {reconnects} reconnect(s), {} predictions in 30 s at 5 fps, \
         longest silence {silence:?}",
        received.len()
    );
    assert!(reconnects <= 1, "{reconnects} reconnects:\n{log}");
    assert!(
        silence < Duration::from_secs(5),
        "{silence:?} without a prediction"
    );
    assert_eq!(
        retained(broker.port, &topic("cmd")),
        None,
        "the command is cleared"
    );
    assert_eq!(
        retained(broker.port, &topic("availability")).as_deref(),
        Some("online")
    );
    assert!(daemon.terminate().success());
}

#[test]
fn ids_come_back_exactly_and_duplicate_keys_are_refused() {
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        "iscamd/#",
        5,
        "commands_per_second = 100\n[cam]\ninterval = \"0s\"\n",
    );
    first_prediction(&observer);
    for payload in [
        r#"{"id":123456789012345678901234567890,"cmd":"republish"}"#,
        r#"{"id":"x\"y","cmd":"republish"}"#,
        r#"{"cmd":"republish","cmd":"explain"}"#,
    ] {
        observer.publish(&topic("cmd"), payload);
    }
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(20),
        "three results",
        |m| m.len() >= 3,
    );
    let json: Vec<serde_json::Value> = results.iter().map(|r| r.json()).collect();
    assert_eq!(
        json[0]["id"], "123456789012345678901234567890",
        "{}",
        json[0]
    );
    assert_eq!(json[0]["ok"], true);
    assert_eq!(json[1]["id"], "x\"y", "{}", json[1]);
    assert_eq!(json[2]["ok"], false, "{}", json[2]);
    let error = json[2]["error"].as_str().unwrap();
    assert!(error.contains("\"cmd\" is given twice"), "{error}");
    assert!(daemon.terminate().success());
}
