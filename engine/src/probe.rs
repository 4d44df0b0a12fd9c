//! Works around glommio 0.9's io_poll probe.
//!
//! glommio decides once per thread and block device whether to send DMA
//! reads to its polled ring, by reading the first DMA file opened on that
//! device. When that file is empty (a new segment), the read "succeeds" at
//! end of file and polled I/O is wrongly enabled; on devices without poll
//! queues (virtio disks among them) every later read then fails with
//! EOPNOTSUPP. Opening a non-empty file first makes the probe real.

use crate::error::{glommio_err, io_err, Result};
use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

thread_local! {
    static PROBED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Makes sure this thread's glommio reactor probed the device holding `dir`
/// with a real read. Cheap after the first call per device.
pub async fn prepare_io_device(dir: &Path) -> Result<()> {
    let dev = std::fs::metadata(dir)
        .map_err(|e| io_err(dir.display().to_string(), e))?
        .dev();
    if PROBED.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(".levee-io-probe");
    std::fs::write(&probe, vec![0u8; 4096]).map_err(|e| io_err(probe.display().to_string(), e))?;
    let f = glommio::io::DmaFile::open(&probe)
        .await
        .map_err(|e| glommio_err(probe.display().to_string(), e))?;
    let _ = f.close().await;
    let _ = std::fs::remove_file(&probe);
    PROBED.with(|p| p.borrow_mut().insert(dev));
    Ok(())
}
