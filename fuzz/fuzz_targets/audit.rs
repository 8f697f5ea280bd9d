#![no_main]
//! `cargo fuzz run audit`: see fuzz/README.md and `ferry::fuzz_targets::audit`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzz_targets::audit(data));
