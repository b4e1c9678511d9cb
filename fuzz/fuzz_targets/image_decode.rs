//! An image file, as `explain`, `classify`, `eval` and the images source decode it.
#![no_main]

use std::path::Path;

use iscamd::source::decode_file_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(image) = decode_file_bytes(bytes, Path::new("fuzz-input")) {
        assert!(image.width() > 0 && image.height() > 0);
    }
});
