//! Frame encode/decode on the hot path: a produce request header naming
//! partitions' slices of a payload, and a fetch response header.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use levee_schemas::proto::*;
use levee_schemas::{decode_request, decode_response, encode_frame, payload_slice};

fn produce_header(partitions: u32) -> RequestHeader {
    RequestHeader {
        correlation_id: 1,
        request: Request::Produce(Box::new(Produce {
            acks: -1,
            timeout_ms: 30_000,
            partitions: Some(
                (0..partitions)
                    .map(|p| ProducePartition {
                        topic: "events".into(),
                        partition: p,
                        payload_offset: p * 65536,
                        payload_len: 65536,
                    })
                    .collect(),
            ),
        })),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for parts in [1u32, 16] {
        let header = produce_header(parts);
        let payload = vec![7u8; parts as usize * 65536];
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode_produce_header/{parts}_partitions"), |b| {
            let mut builder = planus::Builder::new();
            let mut out = Vec::with_capacity(4096);
            b.iter(|| {
                out.clear();
                encode_frame(&mut builder, &header, payload.len(), &mut out);
                out.len()
            })
        });
        let mut frame = Vec::new();
        encode_frame(
            &mut planus::Builder::new(),
            &header,
            payload.len(),
            &mut frame,
        );
        frame.extend_from_slice(&payload);
        g.bench_function(format!("decode_produce/{parts}_partitions"), |b| {
            b.iter_batched_ref(
                || (),
                |_| {
                    let (h, p) = decode_request(&frame[4..]).expect("decodes");
                    let Request::Produce(pr) = h.request else {
                        unreachable!()
                    };
                    pr.partitions
                        .unwrap_or_default()
                        .iter()
                        .map(|pp| {
                            payload_slice(p, pp.payload_offset, pp.payload_len)
                                .map_or(0, |s| s.len())
                        })
                        .sum::<usize>()
                },
                BatchSize::SmallInput,
            )
        });
    }
    let resp = ResponseHeader {
        correlation_id: 9,
        error: ErrorCode::None,
        message: None,
        response: Some(Response::FetchResponse(Box::new(FetchResponse {
            partitions: Some(
                (0..4)
                    .map(|p| FetchPartitionResponse {
                        topic: Some("events".into()),
                        partition: p,
                        error: ErrorCode::None,
                        message: None,
                        high_watermark: 1 << 30,
                        log_start_offset: 0,
                        payload_offset: p << 20,
                        payload_len: 1 << 20,
                        ..Default::default()
                    })
                    .collect(),
            ),
        }))),
    };
    let mut frame = Vec::new();
    encode_frame(&mut planus::Builder::new(), &resp, 0, &mut frame);
    g.bench_function("decode_fetch_response_header/4_partitions", |b| {
        b.iter(|| decode_response(&frame[4..]).map(|(h, _)| h.correlation_id))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
