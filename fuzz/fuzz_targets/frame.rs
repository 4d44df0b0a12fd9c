//! Any bytes after a frame's length prefix: the request and response
//! decoders return a typed error or a header whose payload slices are all
//! checked; they never panic.
#![no_main]

use levee_schemas::proto::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = levee_schemas::frame_len([data[0], data[1], data[2], data[3]], 1 << 20);
    }
    if let Ok((header, payload)) = levee_schemas::decode_request(data) {
        if let Request::Produce(p) = header.request {
            for pp in p.partitions.unwrap_or_default() {
                if let Ok(slice) = levee_schemas::payload_slice(payload, pp.payload_offset, pp.payload_len) {
                    let _ = levee_engine::batch::validate_produced(slice, 1 << 20);
                }
            }
        }
    }
    let _ = levee_schemas::decode_response(data);
});
