#![no_main]
//! `cargo fuzz run packed`: see fuzz/README.md and `ferry::fuzz_targets::packed`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzz_targets::packed(data));
