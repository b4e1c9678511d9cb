//! An MQTT payload on `<prefix>/<device>/cmd`: any bytes must give a command or a message,
//! never a panic, and an accepted command must respect the limits it was checked against.
#![no_main]

use iscamd::cam::{Budget, CamParams};
use iscamd::publish::command::{parse, Command, Limits, MAX_INTERVAL, MIN_INTERVAL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let defaults = CamParams::new("iscam", None, None).expect("default params");
    let budget = Budget::default();
    let limits = Limits {
        defaults: &defaults,
        budget: &budget,
        layer_channels: 512,
        classes: 1000,
        input_size: 227,
    };
    let (id, result) = parse(payload, &limits);
    if let Some(id) = id {
        assert!(!id.is_empty() && id.chars().count() <= 128, "id: {id:?}");
    }
    match result {
        Ok(Command::Explain { params, class }) => {
            assert!(params.channels <= limits.layer_channels);
            assert!(params.passes(limits.layer_channels) <= budget.max_passes);
            assert!(class.is_none_or(|c| c < limits.classes));
        }
        Ok(Command::Set { interval }) => {
            assert!(interval.is_zero() || (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval));
        }
        Ok(Command::Republish) => {}
        Err(message) => assert!(!message.is_empty()),
    }
});
