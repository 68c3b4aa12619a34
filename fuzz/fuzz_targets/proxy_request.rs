#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzzing::proxy::fuzz_proxy_request(data));
