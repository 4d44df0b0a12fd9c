//! CPUs: frequency governor, cores versus shards, transparent huge pages.

use crate::*;
use levee_core::{parse_cpu_list, CoreSpec};

// ---------------------------------------------------------------------------
// 5. CPU frequency governor

pub fn check_governor() -> CheckResult {
    let base = "/sys/devices/system/cpu";
    let mut govs: Vec<(usize, Result<String, String>)> = Vec::new();
    match std::fs::read_dir(base) {
        Err(e) => {
            return could_not_read("cpu-governor", format!("could not read {base}: {e}"));
        }
        Ok(rd) => {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name
                    .strip_prefix("cpu")
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let path = entry.path().join("cpufreq/scaling_governor");
                if path.exists() {
                    govs.push((id, read_trim(&path.to_string_lossy())));
                }
            }
        }
    }
    govs.sort_by_key(|(id, _)| *id);
    judge_governor(&govs)
}

pub fn judge_governor(govs: &[(usize, Result<String, String>)]) -> CheckResult {
    const NAME: &str = "cpu-governor";
    if govs.is_empty() {
        return CheckResult::new(
            NAME,
            Status::Info,
            "no cpufreq scaling_governor files (virtual machine? the hypervisor sets the \
             frequency)",
        );
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut errors = Vec::new();
    for (_, g) in govs {
        match g {
            Ok(g) => match counts.iter_mut().find(|(n, _)| n == g) {
                Some((_, c)) => *c += 1,
                None => counts.push((g.clone(), 1)),
            },
            Err(e) => errors.push(e.clone()),
        }
    }
    let mut found = counts
        .iter()
        .map(|(g, c)| format!("{c} CPU(s) {g}"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(e) = errors.first() {
        let _ = write!(found, "; {e}");
    }
    if counts.iter().all(|(g, _)| g == "performance") && errors.is_empty() {
        CheckResult::new(NAME, Status::Pass, found)
    } else {
        CheckResult::new(
            NAME,
            Status::Warn,
            found
                + ": shards poll and sleep in short bursts, so a power-saving governor adds \
                     wake-up latency",
        )
        .fix("cpupower frequency-set -g performance (or the tuned profile throughput-performance)")
    }
}

// ---------------------------------------------------------------------------
// 6. Cores vs shards

pub(crate) fn usable_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(crate) fn shard_count(cores: &str) -> Result<usize, String> {
    Ok(match CoreSpec::parse(cores)? {
        CoreSpec::All => usable_cpus(),
        CoreSpec::Count(n) => n,
        CoreSpec::List(l) => l.len(),
    })
}

pub fn check_cores(cores: &str) -> CheckResult {
    let online = read_trim("/sys/devices/system/cpu/online").and_then(|s| parse_cpu_list(&s));
    judge_cores(cores, online, usable_cpus())
}

/// `online`: /sys/devices/system/cpu/online; `usable`: CPUs this process may
/// run on (available_parallelism: affinity and cgroup quota), which is what
/// `levee serve` counts.
pub fn judge_cores(cores: &str, online: Result<Vec<usize>, String>, usable: usize) -> CheckResult {
    const NAME: &str = "cores";
    let spec = match CoreSpec::parse(cores) {
        Ok(s) => s,
        Err(e) => {
            return CheckResult::new(NAME, Status::Fail, format!("cores = \"{cores}\": {e}"))
                .fix("cores = \"all\", a count, or a CPU list like \"1-7\"")
        }
    };
    let mut found = match &online {
        Ok(l) => format!("{} CPUs online", l.len()),
        Err(e) => e.clone(),
    };
    let n_online = online.as_ref().map(|l| l.len()).unwrap_or(usable);
    if usable != n_online {
        let _ = write!(found, ", {usable} usable by this process (affinity/cgroup)");
    }
    let (shards, ids) = match &spec {
        CoreSpec::All => (usable, (0..usable).collect::<Vec<_>>()),
        CoreSpec::Count(n) => (*n, (0..*n).collect()),
        CoreSpec::List(l) => (l.len(), l.clone()),
    };
    let _ = write!(found, "; cores = \"{cores}\" -> {shards} shard(s)");
    // `levee serve` refuses a count or CPU id past the usable CPUs.
    let missing: Vec<usize> = ids.iter().copied().filter(|&c| c >= usable).collect();
    if shards > usable || !missing.is_empty() {
        let _ = write!(
            found,
            ": more shards than CPUs (CPU {missing:?} not usable); `levee serve` refuses to start"
        );
        return CheckResult::new(NAME, Status::Fail, found).fix(format!(
            "cores = \"all\" or at most {usable} (one shard per core; a shard never shares its core)"
        ));
    }
    if let Ok(l) = &online {
        let offline: Vec<usize> = ids.iter().copied().filter(|c| !l.contains(c)).collect();
        if !offline.is_empty() {
            let _ = write!(found, ": CPU {offline:?} offline");
            return CheckResult::new(NAME, Status::Fail, found).fix(format!(
                "pick online CPUs (/sys/devices/system/cpu/online: {})",
                l.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    let idle: Vec<usize> = (0..usable).filter(|c| !ids.contains(c)).collect();
    let big = usable >= 8;
    if idle.is_empty() {
        if big {
            found.push_str("; every core runs a shard");
            return CheckResult::new(NAME, Status::Pass, found).fix(format!(
                "optional on a host this big: --cores 1-{} leaves core 0 for NIC/NVMe IRQs \
                 and housekeeping (see tuning/README.md)",
                usable - 1
            ));
        }
        return CheckResult::new(NAME, Status::Pass, found + "; every core runs a shard");
    }
    if idle == [0] {
        return CheckResult::new(
            NAME,
            Status::Pass,
            found + "; core 0 left for IRQs and housekeeping",
        );
    }
    let _ = write!(found, "; {} idle core(s) {idle:?}", idle.len());
    CheckResult::new(NAME, Status::Warn, found).fix(format!(
        "cores = \"all\" on a dedicated host{}",
        if big {
            format!(", or \"1-{}\" to keep only core 0 for IRQs", usable - 1)
        } else {
            String::new()
        }
    ))
}

// ---------------------------------------------------------------------------
// 7. Transparent huge pages

pub fn check_thp() -> CheckResult {
    let enabled = read_trim("/sys/kernel/mm/transparent_hugepage/enabled");
    let defrag = read_trim("/sys/kernel/mm/transparent_hugepage/defrag");
    judge_thp(enabled, defrag.ok())
}

pub fn judge_thp(enabled: Result<String, String>, defrag: Option<String>) -> CheckResult {
    const NAME: &str = "thp";
    let enabled = match enabled {
        Ok(e) => e,
        Err(e) => return CheckResult::new(NAME, Status::Info, e + " (kernel without THP?)"),
    };
    let Some(active) = bracketed(&enabled) else {
        return CheckResult::new(
            NAME,
            Status::Info,
            format!("enabled = `{enabled}` not understood"),
        );
    };
    let mut found = format!("transparent_hugepage/enabled = {active}");
    let defrag_active = defrag.as_deref().and_then(bracketed).map(str::to_string);
    if let Some(d) = &defrag_active {
        let _ = write!(found, ", defrag = {d}");
    }
    let fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (boot: \
               transparent_hugepage=madvise on the kernel command line)";
    match active {
        "always" => CheckResult::new(
            NAME,
            Status::Warn,
            found + ": khugepaged compaction and huge-page faults cause latency spikes",
        )
        .fix(fix),
        _ if defrag_active.as_deref() == Some("always") => CheckResult::new(
            NAME,
            Status::Warn,
            found + ": defrag=always stalls page faults on direct compaction",
        )
        .fix("echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag"),
        "madvise" | "never" => CheckResult::new(NAME, Status::Pass, found),
        _ => CheckResult::new(NAME, Status::Info, found),
    }
}
