//! Unit tests of the judgements (no host reading).
// ---------------------------------------------------------------------------

use super::*;

#[test]
fn scheduler_brackets() {
    assert_eq!(
        bracketed("none [mq-deadline] kyber bfq"),
        Some("mq-deadline")
    );
    assert_eq!(bracketed("[none] mq-deadline kyber bfq \n"), Some("none"));
    assert_eq!(bracketed("none"), Some("none"));
    assert_eq!(bracketed(""), None);
    assert_eq!(bracketed("none mq-deadline"), None);
    assert_eq!(bracketed("none [mq-deadline"), None);
    assert_eq!(bracketed("[]"), None);
}

#[test]
fn scheduler_judgement() {
    let s = |n, sch, r| judge_scheduler(n, Some(sch), Some(r)).0;
    assert_eq!(s("nvme0n1", "[none] mq-deadline", "0"), Status::Pass);
    assert_eq!(s("nvme0n1", "none [mq-deadline]", "0"), Status::Warn);
    assert_eq!(s("vda", "none [mq-deadline]", "1"), Status::Warn);
    assert_eq!(s("sda", "none [mq-deadline]", "1"), Status::Pass);
    assert_eq!(s("sda", "[bfq] none", "1"), Status::Warn);
    assert_eq!(judge_scheduler("zram0", None, None).0, Status::Info);
    assert_eq!(judge_rotational("vda", "1").0, Status::Info);
    assert_eq!(judge_rotational("sda", "1").0, Status::Warn);
    assert_eq!(judge_rotational("nvme0n1", "0").0, Status::Pass);
}

#[test]
fn thp() {
    let j = |e: &str, d: Option<&str>| judge_thp(Ok(e.into()), d.map(String::from)).status;
    assert_eq!(j("[always] madvise never", None), Status::Warn);
    assert_eq!(j("always [madvise] never", None), Status::Pass);
    assert_eq!(j("always madvise [never]", None), Status::Pass);
    assert_eq!(
        j(
            "always [madvise] never",
            Some("[always] defer defer+madvise madvise never")
        ),
        Status::Warn
    );
    assert_eq!(
        j(
            "always [madvise] never",
            Some("always defer defer+madvise [madvise] never")
        ),
        Status::Pass
    );
    assert_eq!(
        judge_thp(Err("could not read x".into()), None).status,
        Status::Info
    );
}

#[test]
fn cores_judgement() {
    let on = |n: usize| Ok((0..n).collect::<Vec<_>>());
    assert_eq!(judge_cores("all", on(4), 4).status, Status::Pass);
    assert_eq!(judge_cores("2", on(4), 4).status, Status::Warn);
    assert_eq!(judge_cores("8", on(4), 4).status, Status::Fail);
    assert_eq!(judge_cores("0,5", on(4), 4).status, Status::Fail);
    assert_eq!(judge_cores("1-15", on(16), 16).status, Status::Pass);
    assert_eq!(judge_cores("x", on(4), 4).status, Status::Fail);
    assert_eq!(
        judge_cores("all", Err("could not read".into()), 2).status,
        Status::Pass
    );
    // CPU 2 offline.
    assert_eq!(
        judge_cores("0-3", Ok(vec![0, 1, 3, 4]), 4).status,
        Status::Fail
    );
}

#[test]
fn fs_names() {
    assert_eq!(fs_name(0xEF53), "ext4");
    assert_eq!(fs_name(0x5846_5342), "xfs");
    assert_eq!(fs_name(0x0102_1994), "tmpfs");
    assert_eq!(fs_name(0x9123_683E), "btrfs");
    assert_eq!(fs_name(0x794c_7630), "overlayfs");
    assert_eq!(fs_name(0x1234), "unknown");
    let ok = |m: u32| judge_odirect(Path::new("d"), Ok(m), Ok(()), None).status;
    assert_eq!(ok(0xEF53), Status::Pass);
    assert_eq!(ok(0x0102_1994), Status::Fail);
    assert_eq!(ok(0x9123_683E), Status::Warn);
    let bad = judge_odirect(
        Path::new("d"),
        Ok(0x0102_1994),
        Err("open(O_DIRECT) failed: Invalid argument".into()),
        None,
    );
    assert_eq!(bad.status, Status::Fail);
    assert!(bad.fix.contains("ext4"), "{}", bad.fix);
}

#[test]
fn dev_numbers() {
    // glibc's makedev, to check the split round-trips.
    let makedev = |maj: u64, min: u64| {
        ((maj & 0xffff_f000) << 32)
            | ((maj & 0x0fff) << 8)
            | ((min & 0xffff_ff00) << 12)
            | (min & 0x00ff)
    };
    assert_eq!(dev_major_minor(0xfe00), (254, 0));
    assert_eq!(dev_major_minor(0x0803), (8, 3));
    for (maj, min) in [(259, 1), (4097, 0x12345), (0, 42), (253, 0)] {
        assert_eq!(dev_major_minor(makedev(maj, min)), (maj, min));
    }
}

#[test]
fn limits_and_sysctls() {
    let inf = RLIM_INFINITY;
    assert_eq!(
        judge_memlock(inf, inf, Some(64), false).status,
        Status::Pass
    );
    assert_eq!(
        judge_memlock(8 * MIB, 8 * MIB, Some(2), false).status,
        Status::Warn
    );
    assert_eq!(
        judge_memlock(64 * KIB, 64 * KIB, Some(2), false).status,
        Status::Fail
    );
    assert_eq!(
        judge_memlock(64 * MIB, inf, Some(2), false).status,
        Status::Pass
    );
    assert_eq!(
        judge_memlock(64 * MIB, inf, Some(8), false).status,
        Status::Warn
    );
    assert_eq!(judge_nofile(1024, 4096).status, Status::Warn);
    assert_eq!(judge_nofile(1 << 20, 1 << 20).status, Status::Pass);
    assert_eq!(judge_swappiness(Ok("60".into())).status, Status::Warn);
    assert_eq!(judge_swappiness(Ok("1".into())).status, Status::Pass);
    assert_eq!(
        judge_swappiness(Err("could not read".into())).status,
        Status::Warn
    );
    assert_eq!(judge_somaxconn(Ok("4096".into())).status, Status::Pass);
    assert_eq!(judge_somaxconn(Ok("128".into())).status, Status::Warn);
    assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
    assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
    assert_eq!(parse_kernel_version("x"), None);
    let old = judge_io_uring(Ok(()), Err("none".into()), Some("5.4.0"));
    assert_eq!(old.status, Status::Fail);
    let off = judge_io_uring(Ok(()), Ok("2".into()), Some("6.8.0"));
    assert_eq!(off.status, Status::Fail);
    let enosys = judge_io_uring(
        Err(io::Error::from_raw_os_error(libc::ENOSYS)),
        Err("none".into()),
        Some("6.8.0"),
    );
    assert_eq!(enosys.status, Status::Fail);
    assert!(enosys.fix.contains("CONFIG_IO_URING"));
}

const KIB: u64 = 1024;

#[test]
fn governor() {
    assert_eq!(judge_governor(&[]).status, Status::Info);
    let g = |v: &[&str]| {
        let v: Vec<_> = v
            .iter()
            .enumerate()
            .map(|(i, s)| (i, Ok(s.to_string())))
            .collect();
        judge_governor(&v).status
    };
    assert_eq!(g(&["performance", "performance"]), Status::Pass);
    assert_eq!(g(&["performance", "powersave"]), Status::Warn);
}

#[test]
fn json_escaping() {
    let r = CheckResult::new("x", Status::Warn, "a \"b\"\n\\c\u{1}").fix("d");
    let j = to_json(&[r]);
    assert!(j.contains(r#""found": "a \"b\"\n\\c\u0001""#), "{j}");
    assert!(j.contains(r#""status": "WARN""#), "{j}");
    assert_eq!(to_json(&[]), "[]");
}

fn test_dir() -> tempfile::TempDir {
    // Under target/tmp like the other tests: /tmp may be tmpfs.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    let _ = std::fs::create_dir_all(&base);
    tempfile::Builder::new()
        .prefix("tune-")
        .tempdir_in(&base)
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory")
}

#[test]
fn every_check_reports_on_this_machine() {
    let tmp = test_dir();
    let args = CheckArgs {
        data_dir: Some(tmp.path().join("data")),
        cores: Some("all".into()),
        ..Default::default()
    };
    let results = run_checks(&args, Ok(BrokerSettings::default()));
    let names: Vec<_> = results.iter().map(|r| r.name).collect();
    for want in [
        "io_uring",
        "memlock",
        "o_direct",
        "disk-scheduler",
        "disk-rotational",
        "cpu-governor",
        "cores",
        "thp",
        "nofile",
        "swappiness",
        "somaxconn",
        "data-device",
        "disk-bandwidth",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in &results {
        let line = r.line();
        println!("{line}");
        assert!(!r.found.is_empty(), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
    // The directory created for the checks is removed again.
    assert!(!tmp.path().join("data").exists());
    assert!(to_json(&results).starts_with('['));
    // No temporary files left behind.
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn measure_disk_small() {
    let tmp = test_dir();
    let r = measure_disk(tmp.path(), 4 * MIB);
    println!("{}", r.line());
    assert_eq!(r.name, "disk-bandwidth");
    assert!(!r.found.is_empty());
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}
