//! libFuzzer target: `ringdb::fuzzing::promql` (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdb::fuzzing::promql(data));
