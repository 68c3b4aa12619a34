#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzzing::net::fuzz_ipv6_services(data));
