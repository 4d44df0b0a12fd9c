//! Batch format: round trips, and rejection of every single-bit flip.

use levee_engine::batch::{self, Record, HEADER_LEN};
use levee_engine::BatchError;
use proptest::prelude::*;

fn record_strategy() -> impl Strategy<Value = Record> {
    (
        any::<i32>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..10),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            ),
            0..3,
        ),
    )
        .prop_map(|(ts, key, value, headers)| Record {
            timestamp: 1_700_000_000_000 + i64::from(ts),
            key,
            value,
            headers,
        })
}

proptest! {
    #[test]
    fn round_trip(records in proptest::collection::vec(record_strategy(), 1..20), base in 0u64..1<<40, epoch in any::<i32>()) {
        let mut b = batch::build_batch(&records);
        batch::validate_produced(&b, usize::MAX).unwrap();
        batch::assign(&mut b, base, epoch);
        let h = batch::validate_stored(&b, usize::MAX).unwrap();
        prop_assert_eq!(h.base_offset(), base);
        prop_assert_eq!(h.record_count() as usize, records.len());
        prop_assert_eq!(h.last_offset(), base + records.len() as u64 - 1);
        prop_assert_eq!(h.first_timestamp(), records.iter().map(|r| r.timestamp).min().unwrap());
        prop_assert_eq!(h.max_timestamp.get(), records.iter().map(|r| r.timestamp).max().unwrap());
        let views = batch::records(&b).unwrap();
        prop_assert_eq!(views.len(), records.len());
        for (i, (v, r)) in views.iter().zip(&records).enumerate() {
            prop_assert_eq!(v.offset, base + i as u64);
            prop_assert_eq!(v.timestamp, r.timestamp);
            prop_assert_eq!(v.key, r.key.as_deref());
            prop_assert_eq!(v.value, r.value.as_deref());
            prop_assert_eq!(v.headers.len(), r.headers.len());
            for (hv, hr) in v.headers.iter().zip(&r.headers) {
                prop_assert_eq!(hv.0, &hr.0[..]);
                prop_assert_eq!(hv.1, hr.1.as_deref());
            }
        }
    }

    /// Every single-bit flip of a stored batch is caught: by the producer's
    /// CRC (attributes to the end), by the length and magic checks, or, for
    /// the fields the broker stamps outside the CRC (base offset, leader
    /// epoch), by the log's position checks: the offset the log expects
    /// there and the epoch its epoch cache gives that offset.
    #[test]
    fn every_single_bit_flip_is_rejected(records in proptest::collection::vec(record_strategy(), 1..4), base in any::<u32>()) {
        let base = u64::from(base);
        let mut b = batch::build_batch(&records);
        batch::assign(&mut b, base, 7);
        let stored = |c: &[u8]| {
            batch::validate_stored(c, usize::MAX)
                .and_then(|h| batch::check_placement(h, base, Some(7)))
        };
        stored(&b).unwrap();
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(stored(&c).is_err(), "flip of bit {} accepted", bit);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = batch::validate_stored(&bytes, 1 << 20);
        let _ = batch::validate_produced(&bytes, 1 << 20);
        let _ = batch::records(&bytes);
        let _ = batch::split_batches(&bytes).count();
    }
}

#[test]
fn typed_errors() {
    let b = batch::build_batch(&[Record {
        timestamp: 5,
        value: Some(b"hello".to_vec()),
        ..Default::default()
    }]);
    assert!(matches!(
        batch::validate_produced(&b[..10], 1 << 20),
        Err(BatchError::TooShort { .. })
    ));
    assert!(matches!(
        batch::validate_produced(&b[..b.len() - 1], 1 << 20),
        Err(BatchError::LengthMismatch { .. })
    ));
    assert!(matches!(
        batch::validate_produced(&b, HEADER_LEN),
        Err(BatchError::TooLarge { .. })
    ));
    let mut m = b.clone();
    m[batch::MAGIC_AT] = 9;
    assert!(matches!(
        batch::validate_produced(&m, 1 << 20),
        Err(BatchError::BadMagic(9))
    ));
    let mut c = b.clone();
    *c.last_mut().unwrap() ^= 1;
    assert!(matches!(
        batch::validate_produced(&c, 1 << 20),
        Err(BatchError::BadCrc { .. })
    ));
}

#[test]
fn kafka_magic_0_and_1_and_bad_counts_are_typed() {
    let b = batch::build_batch(&[Record {
        timestamp: 5,
        value: Some(b"hello".to_vec()),
        ..Default::default()
    }]);
    for magic in [0, 1] {
        let mut m = b.clone();
        m[batch::MAGIC_AT] = magic;
        assert_eq!(
            batch::validate_produced(&m, 1 << 20).unwrap_err(),
            BatchError::BadMagic(magic)
        );
    }
    let mut c = b.clone();
    c[60] = 2; // records_count 2, last_offset_delta 0
    assert!(matches!(
        batch::validate_produced(&c, 1 << 20),
        Err(BatchError::BadOffsetDelta { .. })
    ));
    let mut z = b.clone();
    z[22] = 5; // codec 5
    assert!(matches!(
        batch::validate_produced(&z, 1 << 20),
        Err(BatchError::UnknownCompression(5))
    ));
}

#[test]
fn a_format_1_batch_is_recognised() {
    let mut old = vec![0u8; 64];
    old[12] = 1;
    let crc = crc32c::crc32c(&old[..20]);
    old[20..24].copy_from_slice(&crc.to_le_bytes());
    assert!(batch::is_format_1(&old));
    assert!(!batch::is_format_1(&batch::build_batch(&[
        Record::default()
    ])));
}

#[test]
fn producer_crc_survives_offset_assignment() {
    // The broker stamps offsets without touching the producer's CRC.
    let mut b = batch::build_batch(&[Record {
        timestamp: 1,
        value: Some(vec![1; 100]),
        ..Default::default()
    }]);
    let crc_before = batch::BatchHeader::parse(&b).unwrap().crc.get();
    batch::assign(&mut b, 12345, 3);
    let h = batch::validate_stored(&b, usize::MAX).unwrap();
    assert_eq!(h.crc.get(), crc_before);
    assert_eq!(h.leader_epoch(), 3);
}

#[test]
fn set_producer_stamps_the_fields_and_keeps_the_batch_valid() {
    let recs = vec![
        Record {
            timestamp: 5,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![],
        };
        3
    ];
    let mut b = batch::build_batch(&recs);
    batch::set_producer(&mut b, 77, 3, 1000);
    let h = batch::validate_produced(&b, 1 << 20).unwrap();
    assert_eq!(
        (h.producer_id(), h.producer_epoch(), h.base_sequence()),
        (77, 3, 1000)
    );
    assert_eq!(batch::records(&b).unwrap().len(), 3);
    // A bit flipped after stamping is still caught.
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(batch::validate_produced(&b, 1 << 20).is_err());
}
