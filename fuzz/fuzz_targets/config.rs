//! Any bytes as a config file: an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrigger::config::{self, Overrides};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:1".into()),
        ..Overrides::default()
    };
    let _ = config::from_text(
        &text,
        Some(std::path::Path::new("/nonexistent/fuzz.yaml")),
        &overrides,
    );
});
