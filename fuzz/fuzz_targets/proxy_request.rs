#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_proxy::fuzzing::fuzz_proxy_request(data));
