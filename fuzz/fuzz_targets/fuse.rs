#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fs::fuzzing::fuzz_fuse(data));
