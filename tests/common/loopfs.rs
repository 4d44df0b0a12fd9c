//! A filesystem of its own for a test: an ext4 image loop-mounted, so
//! that a test can fill it (a full disk) without touching the host's.

use std::path::PathBuf;
use std::process::Command;

/// A filesystem of its own: an ext4 image in /tmp, loop-mounted. Dropping
/// it unmounts it and removes the image and the directories it made.
pub struct LoopFs {
    base: PathBuf,
    img: PathBuf,
    pub mnt: PathBuf,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    /// `Err`: why this host cannot run the test.
    pub fn create(mib: u64) -> Result<LoopFs, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!(
                "not root (uid {uid}): mounting a loop device needs root"
            ));
        }
        run(Command::new("mkfs.ext4").arg("-V"))
            .map_err(|e| format!("mkfs.ext4 is not available: {e}"))?;
        run(Command::new("losetup").arg("-f")).map_err(|e| format!("no free loop device: {e}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let base = PathBuf::from(format!(
            "/tmp/levee-disk-full-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
        let mut fs = LoopFs {
            img: base.join("disk.img"),
            mnt: base.join("mnt"),
            base,
            mounted: false,
        };
        run(Command::new("truncate")
            .arg("-s")
            .arg(format!("{mib}M"))
            .arg(&fs.img))?;
        // 4 KiB blocks, as on a real data disk (a small image would get
        // 1 KiB ones): a log's preallocation steps are whole blocks then.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&fs.img))?;
        std::fs::create_dir(&fs.mnt).map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&fs.img)
            .arg(&fs.mnt))
        .map_err(|e| format!("cannot loop-mount an image (no loop devices here?): {e}"))?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Takes whatever space produce left (less than a batch) with a file of
    /// its own beside the data directory, as any other writer on the disk
    /// would: afterwards not a block is free. Returns the bytes it took.
    pub fn top_up(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.mnt.join(name)).unwrap();
        let mut took = 0u64;
        for chunk in [1 << 16, 4096, 1] {
            let buf = vec![7u8; chunk];
            while f.write_all(&buf).is_ok() {
                took += chunk as u64;
            }
        }
        let _ = f.sync_all();
        took
    }

    /// A new directory `data` on the filesystem, for a broker's data.
    pub fn data_dir(&self) -> PathBuf {
        let d = self.mnt.join("data");
        std::fs::create_dir(&d).unwrap();
        d
    }

    /// Takes every free block with files of its own (`filler-N`, from 1 GiB
    /// down to 4 KiB each) as another writer on the disk would: afterwards
    /// a new block cannot be allocated. Returns the bytes taken.
    pub fn fill(&self) -> u64 {
        let mut took = 0u64;
        let mut n = 0usize;
        let mut size: u64 = 1 << 30;
        while size >= 4096 {
            let f = self.mnt.join(format!("filler-{n}"));
            let ok = Command::new("fallocate")
                .arg("-l")
                .arg(size.to_string())
                .arg(&f)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                took += size;
                n += 1;
            } else {
                let _ = std::fs::remove_file(&f);
                size /= 2;
            }
        }
        took
    }

    /// Frees what [`LoopFs::fill`] took.
    pub fn unfill(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.mnt) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("filler-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let unmounted = run(Command::new("umount").arg(&self.mnt)).is_ok()
                || run(Command::new("umount").arg("-l").arg(&self.mnt)).is_ok();
            if !unmounted {
                eprintln!(
                    "could not unmount {}: left in place with {}",
                    self.mnt.display(),
                    self.img.display()
                );
                return;
            }
        }
        let _ = std::fs::remove_file(&self.img);
        // Empty once unmounted: never removed recursively.
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_dir(&self.base);
    }
}
