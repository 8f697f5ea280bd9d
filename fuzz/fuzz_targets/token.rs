#![no_main]
//! `cargo fuzz run token`: see fuzz/README.md and `ferry::fuzz_targets::token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzz_targets::token(data));
