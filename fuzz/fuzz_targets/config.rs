#![no_main]
//! `cargo fuzz run config`: see fuzz/README.md and `ferry::fuzz_targets::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzz_targets::config(data));
