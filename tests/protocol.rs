//! The native protocol against the real broker, spoken raw: bad frames, bad
//! batches and unknown topics get typed errors and never disturb other
//! connections.

mod common;

use common::Broker;
use levee_engine::batch::{build_batch, split_batches, Record};
use levee_schemas::proto::*;
use levee_schemas::{decode_response, request_frame};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Raw {
    s: TcpStream,
    next: u64,
}

impl Raw {
    fn connect(b: &Broker) -> Raw {
        let s = TcpStream::connect(b.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { s, next: 1 }
    }

    fn hello(b: &Broker) -> Raw {
        let mut r = Raw::connect(b);
        let (h, _) = r.call(
            Request::Hello(Box::new(Hello {
                client_id: Some("raw-test".into()),
                min_version: 1,
                max_version: 1,
            })),
            &[],
        );
        assert_eq!(h.error, ErrorCode::None, "{:?}", h.message);
        r
    }

    fn send(&mut self, req: Request, payload: &[u8]) -> u64 {
        let id = self.next;
        self.next += 1;
        let frame = request_frame(
            &RequestHeader {
                correlation_id: id,
                request: req,
            },
            payload,
        );
        self.s.write_all(&frame).unwrap();
        id
    }

    /// Reads one response frame; None when the server closed the connection.
    fn recv(&mut self) -> Option<(ResponseHeader, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.s.read_exact(&mut body).ok()?;
        let (h, payload) = decode_response(&body).expect("response decodes");
        Some((h, payload.to_vec()))
    }

    fn call(&mut self, req: Request, payload: &[u8]) -> (ResponseHeader, Vec<u8>) {
        let id = self.send(req, payload);
        let (h, p) = self.recv().expect("a response");
        assert_eq!(h.correlation_id, id);
        (h, p)
    }

    fn create(&mut self, name: &str, partitions: u32) {
        let (h, _) = self.call(
            Request::CreateTopic(Box::new(CreateTopic {
                name: name.into(),
                config: Some(Box::new(TopicConfig {
                    partitions,
                    replication_factor: 1,
                    retention_bytes: -1,
                    retention_ms: -1,
                    fsync: None,
                    max_backlog_bytes: -1,
                    segment_bytes: -1,
                })),
            })),
            &[],
        );
        match h.response {
            Some(Response::TopicResult(t)) => {
                assert_eq!(t.error, ErrorCode::None, "{:?}", t.message)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn produce(&mut self, topic: &str, partition: u32, payload: &[u8]) -> ProducePartitionResponse {
        let (h, _) = self.call(
            Request::Produce(Box::new(Produce {
                acks: -1,
                timeout_ms: 10_000,
                partitions: Some(vec![ProducePartition {
                    topic: topic.into(),
                    partition,
                    payload_offset: 0,
                    payload_len: payload.len() as u32,
                }]),
            })),
            payload,
        );
        match h.response {
            Some(Response::ProduceResponse(mut p)) => p.partitions.take().unwrap().remove(0),
            other => panic!("unexpected {other:?} {:?}", h.message),
        }
    }

    fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> (FetchPartitionResponse, Vec<u8>) {
        let (h, payload) = self.call(
            Request::Fetch(Box::new(Fetch {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1 << 20,
                partitions: Some(vec![FetchPartition {
                    topic: topic.into(),
                    partition,
                    offset,
                    max_bytes: 1 << 20,
                }]),
            })),
            &[],
        );
        match h.response {
            Some(Response::FetchResponse(mut f)) => {
                let r = f.partitions.take().unwrap().remove(0);
                let data = payload
                    [r.payload_offset as usize..(r.payload_offset + r.payload_len) as usize]
                    .to_vec();
                (r, data)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn batch(values: &[&str]) -> Vec<u8> {
    let recs: Vec<Record> = values
        .iter()
        .map(|v| Record {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(v.as_bytes().to_vec()),
            headers: vec![],
        })
        .collect();
    build_batch(&recs)
}

#[test]
fn produce_then_fetch_returns_the_stored_bytes() {
    let b = Broker::start("proto-roundtrip");
    let mut c = Raw::hello(&b);
    c.create("t", 4);
    for p in 0..4 {
        let r = c.produce("t", p, &batch(&["a", "b", "c"]));
        assert_eq!(
            (r.error, r.base_offset, r.last_offset),
            (ErrorCode::None, 0, 2),
            "{:?}",
            r.message
        );
        let r = c.produce("t", p, &batch(&["d"]));
        assert_eq!(r.base_offset, 3);
    }
    let (r, data) = c.fetch("t", 2, 0);
    assert_eq!(r.error, ErrorCode::None);
    assert_eq!(r.high_watermark, 4);
    let batches: Vec<_> = split_batches(&data).collect();
    assert_eq!(batches.len(), 2);
    let recs = levee_engine::batch::records(batches[1]).unwrap();
    assert_eq!((recs[0].offset, recs[0].value), (3, Some(&b"d"[..])));
    // Fetching at the end returns nothing, past it is a typed error.
    let (r, data) = c.fetch("t", 2, 4);
    assert!(data.is_empty() && r.error == ErrorCode::None);
    let (r, _) = c.fetch("t", 2, 99);
    assert_eq!(r.error, ErrorCode::OffsetOutOfRange);
}

#[test]
fn the_first_request_must_be_hello() {
    let b = Broker::start("proto-hello");
    let mut c = Raw::connect(&b);
    let (h, _) = c.call(Request::ListTopics(Box::new(ListTopics {})), &[]);
    assert_eq!(h.error, ErrorCode::UnsupportedVersion);
    assert!(c.recv().is_none(), "the connection is closed");
    let mut c = Raw::connect(&b);
    let (h, _) = c.call(
        Request::Hello(Box::new(Hello {
            client_id: None,
            min_version: 7,
            max_version: 9,
        })),
        &[],
    );
    assert_eq!(h.error, ErrorCode::UnsupportedVersion);
    assert!(h.message.unwrap().contains("7..=9"));
}

#[test]
fn garbage_oversized_and_corrupt_input_get_errors_and_others_keep_working() {
    let b = Broker::start_with("proto-garbage", &["--cores", "2"]);
    let mut good = Raw::hello(&b);
    good.create("g", 2);

    // Garbage inside a well-formed frame: an error response, the connection lives on.
    let mut bad = Raw::hello(&b);
    let mut frame = 100u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&20u32.to_le_bytes());
    frame.extend((0..96).map(|i| (i * 37 % 251) as u8));
    bad.s.write_all(&frame).unwrap();
    let (h, _) = bad.recv().expect("an error response");
    assert_eq!(h.error, ErrorCode::InvalidRequest, "{:?}", h.message);
    let (h, _) = bad.call(Request::ListTopics(Box::new(ListTopics {})), &[]);
    assert_eq!(h.error, ErrorCode::None);

    // A header length past the frame.
    bad.s
        .write_all(&[8, 0, 0, 0, 255, 255, 0, 0, 1, 2, 3, 4])
        .unwrap();
    let (h, _) = bad.recv().expect("an error response");
    assert_eq!(h.error, ErrorCode::InvalidRequest);

    // A frame over max_frame_bytes: MessageTooLarge naming the correlation id, then close.
    let mut big = Raw::hello(&b);
    let mut f = request_frame(
        &RequestHeader {
            correlation_id: 77,
            request: Request::ListTopics(Box::new(ListTopics {})),
        },
        &[],
    );
    f[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    big.s.write_all(&f).unwrap();
    let (h, _) = big.recv().expect("an error response");
    assert_eq!(
        (h.error, h.correlation_id),
        (ErrorCode::MessageTooLarge, 77)
    );
    assert!(big.recv().is_none(), "the connection is closed");

    // A batch with a wrong CRC is refused and nothing is written.
    let mut bytes = batch(&["x", "y"]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let r = good.produce("g", 0, &bytes);
    assert_eq!(r.error, ErrorCode::CorruptBatch, "{:?}", r.message);
    assert!(r.message.unwrap().contains("CRC"));
    // Trailing bytes that are not a whole batch are refused too.
    let mut bytes = batch(&["x"]);
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(good.produce("g", 0, &bytes).error, ErrorCode::CorruptBatch);
    let (r, data) = good.fetch("g", 0, 0);
    assert_eq!((r.high_watermark, data.len()), (0, 0));

    // Unknown topic and partition.
    let r = good.produce("nope", 0, &batch(&["x"]));
    assert_eq!(r.error, ErrorCode::UnknownTopicOrPartition);
    assert!(r.message.unwrap().contains("`nope` does not exist"));
    assert_eq!(
        good.produce("g", 9, &batch(&["x"])).error,
        ErrorCode::UnknownTopicOrPartition
    );

    // A payload slice outside the payload.
    let (h, _) = good.call(
        Request::Produce(Box::new(Produce {
            acks: 1,
            timeout_ms: 1000,
            partitions: Some(vec![ProducePartition {
                topic: "g".into(),
                partition: 1,
                payload_offset: 5,
                payload_len: u32::MAX,
            }]),
        })),
        &[0; 10],
    );
    match h.response {
        Some(Response::ProduceResponse(p)) => {
            assert_eq!(p.partitions.unwrap()[0].error, ErrorCode::InvalidRequest)
        }
        other => panic!("{other:?}"),
    }

    // After all that, the good connection still works on both shards.
    for p in 0..2 {
        let r = good.produce("g", p, &batch(&["ok"]));
        assert_eq!((r.error, r.base_offset), (ErrorCode::None, 0));
    }
    assert!(!b.log_text().contains("panicked"));
}
