//! The machine a run happened on, as far as it matters for comparing figures: the CPU, how many
//! cores the generator may use, the kernel, and the pinning (CPU affinity) of the generator.
//! Read from `/proc` on Linux; what cannot be read is left out rather than guessed.

use serde::{Deserialize, Serialize};

/// Where a result was measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// CPUs the kernel has online.
    pub cores_online: Option<usize>,
    /// CPUs this process may run on (its affinity and any CPU quota).
    pub cores_available: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// The CPUs the generator was allowed to run on, e.g. `0-1`; `0` when pinned with
    /// `taskset -c 0`.
    pub affinity: Option<String>,
    pub affinity_cpus: Option<Vec<usize>>,
    pub os: String,
    pub arch: String,
}

impl Machine {
    /// Describes the machine this process runs on.
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let cpuinfo = read("/proc/cpuinfo");
        let affinity = read("/proc/self/status").and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .map(|list| list.trim().to_owned())
        });
        Self {
            cpu_model: cpuinfo.as_deref().and_then(cpu_model),
            cores_online: read("/sys/devices/system/cpu/online")
                .and_then(|list| parse_cpu_list(&list))
                .map(|cpus| cpus.len())
                .or_else(|| cpuinfo.as_deref().map(count_processors)),
            cores_available: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").map(|release| release.trim().to_owned()),
            affinity_cpus: affinity.as_deref().and_then(parse_cpu_list),
            affinity,
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        // x86 says `model name`; some ARM kernels only give `Model` or `CPU part`.
        matches!(key.trim(), "model name" | "Model")
            .then(|| value.trim().to_owned())
            .filter(|model| !model.is_empty())
    })
}

fn count_processors(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|line| line.split(':').next().map(str::trim) == Some("processor"))
        .count()
}

/// Parses the kernel's CPU list format (`0-3,8,10-11`).
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_parsed() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        for bad in ["", "a", "3-1", "1,,2", "1-"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_cpu_model_and_count_come_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n\
                       model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz\n\nprocessor\t: 1\n\
                       model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.00GHz")
        );
        assert_eq!(count_processors(cpuinfo), 2);
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_is_described() {
        let machine = Machine::detect();
        assert!(machine.cores_available >= 1);
        assert!(machine.kernel.is_some());
        let cpus = machine.affinity_cpus.expect("Linux reports the affinity");
        assert!(!cpus.is_empty());
        assert!(machine.cores_online.is_some_and(|online| online >= 1));
    }
}
