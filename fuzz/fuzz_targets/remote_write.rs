//! libFuzzer target: `ringdb::fuzzing::remote_write` (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdb::fuzzing::remote_write(data));
