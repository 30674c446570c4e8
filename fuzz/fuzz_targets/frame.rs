//! libFuzzer target: `ringdb::fuzzing::frame` (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdb::fuzzing::frame(data));
