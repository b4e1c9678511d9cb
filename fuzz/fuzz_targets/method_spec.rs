//! `iscamd eval --methods` and `--sweep` arguments.
#![no_main]

use iscamd::cam::Weighting;
use iscamd::eval::{expand_sweep, MethodSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = MethodSpec::parse(text, Weighting::default(), 0);
    if let Ok(specs) = expand_sweep(text) {
        assert!(specs.len() <= 10_000);
    }
});
