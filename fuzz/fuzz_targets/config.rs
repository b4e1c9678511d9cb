//! A config file: any text must parse and validate into a config or a keyed error.
#![no_main]

use iscamd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        // Everything derived from a validated config must work too.
        let _ = config.device_id();
        assert!(
            config.cam.params().is_ok(),
            "validated config with bad cam params"
        );
    }
});
