//! Any bytes as a record batch: validation and record decoding return typed
//! errors and never panic; a batch that validates decodes in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = levee_engine::batch::validate_produced(data, 1 << 20);
    if levee_engine::batch::validate_stored(data, 1 << 20).is_ok() {
        let _ = levee_engine::batch::records(data);
    }
    let _ = levee_engine::batch::records(data);
    for b in levee_engine::batch::split_batches(data) {
        let _ = levee_engine::batch::validate_stored_header(b, 1 << 20);
    }
});
