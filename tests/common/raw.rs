//! A raw native-protocol client over a blocking socket, for tests that
//! craft frames by hand.
#![allow(dead_code)]

use super::Broker;
use levee_engine::batch::{build_batch, Record};
use levee_schemas::proto::*;
use levee_schemas::{decode_response, request_frame};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Raw {
    pub s: TcpStream,
    next: u64,
}

impl Raw {
    pub fn connect(b: &Broker) -> Raw {
        let s = TcpStream::connect(b.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { s, next: 1 }
    }

    pub fn hello(b: &Broker) -> Raw {
        let mut r = Raw::connect(b);
        let (h, _) = r.call(
            Request::Hello(Box::new(Hello {
                client_id: Some("raw-test".into()),
                min_version: levee_schemas::PROTOCOL_VERSION,
                max_version: levee_schemas::PROTOCOL_VERSION,
            })),
            &[],
        );
        assert_eq!(h.error, ErrorCode::None, "{:?}", h.message);
        r
    }

    /// A second handle on this connection, to read responses on another
    /// thread while this one keeps sending (pipelining).
    pub fn reader(&self) -> Raw {
        Raw {
            s: self.s.try_clone().unwrap(),
            next: 0,
        }
    }

    pub fn send(&mut self, req: Request, payload: &[u8]) -> u64 {
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
    pub fn recv(&mut self) -> Option<(ResponseHeader, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.s.read_exact(&mut body).ok()?;
        let (h, payload) = decode_response(&body).expect("response decodes");
        Some((h, payload.to_vec()))
    }

    pub fn call(&mut self, req: Request, payload: &[u8]) -> (ResponseHeader, Vec<u8>) {
        let id = self.send(req, payload);
        let (h, p) = self.recv().expect("a response");
        assert_eq!(h.correlation_id, id);
        (h, p)
    }

    pub fn create(&mut self, name: &str, partitions: u32) {
        self.create_with(name, config(partitions));
    }

    pub fn create_with(&mut self, name: &str, cfg: TopicConfig) {
        let (h, _) = self.call(
            Request::CreateTopic(Box::new(CreateTopic {
                name: name.into(),
                config: Some(Box::new(cfg)),
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

    /// Produces with acks=all; a lost connection is Err.
    pub fn try_produce(
        &mut self,
        topic: &str,
        partition: u32,
        payload: &[u8],
    ) -> Result<ProducePartitionResponse, String> {
        let id = self.send_checked(
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
        )?;
        let (h, _) = self.recv().ok_or("connection lost")?;
        assert_eq!(h.correlation_id, id);
        match h.response {
            Some(Response::ProduceResponse(mut p)) => Ok(p.partitions.take().unwrap().remove(0)),
            _ => Err(format!("{:?}: {:?}", h.error, h.message)),
        }
    }

    fn send_checked(&mut self, req: Request, payload: &[u8]) -> Result<u64, String> {
        let id = self.next;
        self.next += 1;
        let frame = request_frame(
            &RequestHeader {
                correlation_id: id,
                request: req,
            },
            payload,
        );
        self.s.write_all(&frame).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Produces with acks=all; panics if the connection is lost.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        payload: &[u8],
    ) -> ProducePartitionResponse {
        self.try_produce(topic, partition, payload)
            .unwrap_or_else(|e| panic!("produce: {e}"))
    }

    pub fn fetch(
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
                    leader_epoch: -1,
                    log_start_offset: -1,
                }]),
                replica_id: -1,
                isolation_level: 0,
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

pub fn batch(values: &[&str]) -> Vec<u8> {
    let recs: Vec<Record> = values
        .iter()
        .map(|v| Record {
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            key: None,
            value: Some(v.as_bytes().to_vec()),
            headers: vec![],
        })
        .collect();
    build_batch(&recs)
}

pub fn config(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        replication_factor: 1,
        retention_bytes: -1,
        retention_ms: -1,
        fsync: None,
        max_backlog_bytes: -1,
        segment_bytes: -1,
        max_message_bytes: -1,
    }
}

impl Raw {
    /// JoinGroup (native): waits for the rebalance.
    pub fn join_group(
        &mut self,
        group: &str,
        member: &str,
        topics: &[&str],
        session_ms: u32,
    ) -> JoinGroupResponse {
        let (h, _) = self.call(
            Request::JoinGroup(Box::new(JoinGroup {
                group: group.into(),
                member_id: Some(member.into()),
                client_id: Some("test".into()),
                topics: Some(topics.iter().map(|t| t.to_string()).collect()),
                strategy: Some("range".into()),
                session_timeout_ms: session_ms,
                rebalance_timeout_ms: 5000,
            })),
            &[],
        );
        match h.response {
            Some(Response::JoinGroupResponse(j)) => *j,
            other => panic!("join: {other:?} {:?} {:?}", h.error, h.message),
        }
    }

    /// CommitOffsets: the group's error and the per-partition failures.
    pub fn commit_offsets(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(&str, u32, i64)],
    ) -> (ErrorCode, Vec<PartitionError>) {
        let (h, _) = self.call(
            Request::CommitOffsets(Box::new(CommitOffsets {
                group: group.into(),
                member_id: Some(member.into()),
                generation,
                offsets: Some(
                    offsets
                        .iter()
                        .map(|(t, p, o)| CommittedOffset {
                            topic: t.to_string(),
                            partition: *p,
                            offset: *o,
                            metadata: Some("m".into()),
                            commit_timestamp_ms: 0,
                        })
                        .collect(),
                ),
            })),
            &[],
        );
        match h.response {
            Some(Response::OffsetsResponse(r)) => (r.error, r.failed.unwrap_or_default()),
            None => (h.error, vec![]),
            other => panic!("{other:?}"),
        }
    }
}
