//! The fuzz targets' bodies on stable: random bytes and mutated valid frames
//! never make the decoders panic, and every payload slice they accept is in
//! bounds.

use levee_schemas::proto::*;
use levee_schemas::{decode_request, decode_response, payload_slice, request_frame};
use proptest::prelude::*;

fn check(body: &[u8]) {
    if let Ok((header, payload)) = decode_request(body) {
        if let Request::Produce(p) = header.request {
            for pp in p.partitions.unwrap_or_default() {
                if let Ok(s) = payload_slice(payload, pp.payload_offset, pp.payload_len) {
                    assert_eq!(s.len(), pp.payload_len as usize);
                    let _ = levee_engine::batch::validate_produced(s, 1 << 20);
                }
            }
        }
    }
    let _ = decode_response(body);
}

fn produce_frame(topic: &str, payload: &[u8]) -> Vec<u8> {
    request_frame(
        &RequestHeader {
            correlation_id: 9,
            request: Request::Produce(Box::new(Produce {
                acks: -1,
                timeout_ms: 100,
                partitions: Some(vec![ProducePartition {
                    topic: topic.into(),
                    partition: 1,
                    payload_offset: 0,
                    payload_len: payload.len() as u32,
                }]),
            })),
        },
        payload,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&body);
    }

    #[test]
    fn mutated_produce_frames(
        topic in "[a-z]{1,20}",
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = produce_frame(&topic, &payload);
        let mut body = frame[4..].to_vec();
        for (i, x) in flips {
            let i = i.index(body.len());
            body[i] ^= x;
        }
        check(&body);
        let cut = cut.index(body.len() + 1);
        check(&body[..cut]);
    }
}
