//! libFuzzer target: `ringdb::fuzzing::snapshot` (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdb::fuzzing::snapshot(data));
