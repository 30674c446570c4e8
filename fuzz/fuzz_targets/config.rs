//! libFuzzer target: `ringdb::fuzzing::config` (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdb::fuzzing::config(data));
