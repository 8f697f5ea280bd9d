#![no_main]
//! `cargo fuzz run form`: see fuzz/README.md and `ferry::fuzz_targets::form`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzz_targets::form(data));
