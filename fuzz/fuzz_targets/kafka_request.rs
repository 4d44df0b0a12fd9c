//! Any bytes as a Kafka request frame body (after the size prefix): the
//! header and request decoders of every API and version the broker serves
//! return an error or a request; they never panic or reserve memory by a
//! count the bytes cannot hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = levee_server::net::kafka::codec::decode_any(data);
});
