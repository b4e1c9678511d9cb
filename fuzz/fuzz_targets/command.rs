//! An MQTT payload on `<prefix>/<device>/cmd`: any bytes must give a command or a message,
//! never a panic, and an accepted command must respect the limits it was checked against.
#![no_main]

use iscamd::cam::{Budget, CamParams};
use iscamd::cam::config::{MAX_INTERVAL, MIN_INTERVAL};
use iscamd::error::with_causes;
use iscamd::publish::command::{parse, Command, Limits};
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
        Ok(Command::Set { interval, live }) => {
            assert!(interval.is_some() || live.is_some());
            assert!(interval
                .is_none_or(|i| i.is_zero() || (MIN_INTERVAL..=MAX_INTERVAL).contains(&i)));
        }
        Ok(Command::Republish | Command::Reload) => {}
        Err(e) => assert!(!with_causes(&e).is_empty()),
    }
});
