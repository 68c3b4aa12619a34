#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzzing::net::fuzz_net_chain(data));
