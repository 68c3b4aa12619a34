#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_net::fuzzing::fuzz_api(data));
