//! libFuzzer target: `ringdb::fuzzing::exposition` (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdb::fuzzing::exposition(data));
