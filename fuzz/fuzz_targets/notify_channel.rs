#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzzing::fs::fuzz_notify_channel(data));
