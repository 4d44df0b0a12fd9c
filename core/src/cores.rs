//! Which CPUs run shards: the `cores` setting (`levee serve --cores`,
//! `cores` in the config file, `levee tune --cores`) and CPU lists such as
//! sysfs's `/sys/devices/system/cpu/online`.

use std::collections::HashSet;
use std::str::FromStr;

/// The widest range one CPU list entry may span (`0-65536`).
const RANGE_CPUS_MAX: usize = 1 << 16;

/// What a `cores` setting asks for: one shard per CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSpec {
    /// `all` (or empty): every CPU this process may use.
    All,
    /// `N`: the first N CPUs (at least 1).
    Count(usize),
    /// A CPU list such as `0,2-3`: these CPUs, in this order, each once.
    List(Vec<usize>),
}

impl CoreSpec {
    /// Parses `all`, a count, or a CPU list like `0,2-3`.
    pub fn parse(spec: &str) -> Result<CoreSpec, String> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "all" {
            return Ok(CoreSpec::All);
        }
        if spec.contains([',', '-']) {
            return parse_cpu_list(spec).map(CoreSpec::List);
        }
        match spec.parse::<usize>() {
            Ok(0) => Err("0 cores asked for; at least 1 is needed".to_string()),
            Ok(n) => Ok(CoreSpec::Count(n)),
            Err(_) => Err(format!(
                "`{spec}` is not `all`, a count, or a CPU list like `0,2-3`"
            )),
        }
    }

    /// The CPUs to run shards on, one shard per entry, on a machine whose
    /// usable CPUs are `0..online`: an error if the spec names more CPUs, or
    /// a CPU, than there are.
    pub fn cpus(&self, online: usize) -> Result<Vec<usize>, String> {
        match self {
            CoreSpec::All => Ok((0..online).collect()),
            CoreSpec::Count(n) if *n > online => {
                Err(format!("{n} cores asked for, this machine has {online}"))
            }
            CoreSpec::Count(n) => Ok((0..*n).collect()),
            CoreSpec::List(l) => match l.iter().find(|&&c| c >= online) {
                Some(c) => Err(format!(
                    "CPU {c} does not exist (this machine has {online})"
                )),
                None => Ok(l.clone()),
            },
        }
    }
}

impl FromStr for CoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<CoreSpec, String> {
        CoreSpec::parse(s)
    }
}

/// Parses a CPU list such as `0-3,5` (or sysfs's `0-7\n`) into CPU ids, in
/// the order given, each once. An empty list is empty.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let mut cpus = Vec::new();
    if s.is_empty() {
        return Ok(cpus);
    }
    let mut seen = HashSet::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{part}` in `{s}` is not a CPU id or range"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("range `{part}` is backwards"));
        }
        if b - a > RANGE_CPUS_MAX {
            return Err(format!("range `{part}` is too large"));
        }
        cpus.extend((a..=b).filter(|c| seen.insert(*c)));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(spec: &str, online: usize) -> Result<Vec<usize>, String> {
        CoreSpec::parse(spec)?.cpus(online)
    }

    #[test]
    fn cores() {
        assert_eq!(cpus("all", 2).unwrap(), vec![0, 1]);
        assert_eq!(cpus("1", 2).unwrap(), vec![0]);
        assert_eq!(cpus("0-1", 2).unwrap(), vec![0, 1]);
        assert!(cpus("3", 2).is_err());
        assert!(cpus("0,5", 2).is_err());
        assert!(cpus("x", 2).is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5").unwrap(), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_cpu_list("0\n").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-1,1,8-9").unwrap(), vec![0, 1, 8, 9]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("0-").is_err());
        assert_eq!(CoreSpec::parse("all").unwrap(), CoreSpec::All);
        assert_eq!(CoreSpec::parse("2").unwrap(), CoreSpec::Count(2));
        assert_eq!(CoreSpec::parse("1-2").unwrap(), CoreSpec::List(vec![1, 2]));
        assert!(CoreSpec::parse("0").is_err());
    }

    #[test]
    fn lists_keep_their_order_and_resolve_against_the_machine() {
        // Shard i runs on the i-th CPU listed.
        assert_eq!(cpus(" 3, 1-2 ,1 ", 4).unwrap(), vec![3, 1, 2]);
        assert_eq!(CoreSpec::parse("").unwrap(), CoreSpec::All);
        assert_eq!(" 4 ".parse(), Ok(CoreSpec::Count(4)));
        assert_eq!(
            cpus("4", 2).unwrap_err(),
            "4 cores asked for, this machine has 2"
        );
        assert_eq!(
            cpus("0,2", 2).unwrap_err(),
            "CPU 2 does not exist (this machine has 2)"
        );
        assert_eq!(
            cpus("x", 2).unwrap_err(),
            "`x` is not `all`, a count, or a CPU list like `0,2-3`"
        );
        assert!(CoreSpec::parse("0-100000")
            .unwrap_err()
            .contains("too large"));
        assert!(CoreSpec::parse("2-1").unwrap_err().contains("backwards"));
        assert!(CoreSpec::parse("1,,2").is_err());
    }
}
