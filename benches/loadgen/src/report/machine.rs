//! The machine a run was made on, from Linux's `/proc` text.

use serde::Serialize;

/// The machine the load generator ran on (usually the service's too).
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo, or `unknown`.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cores: usize,
    /// `MemTotal` from /proc/meminfo, bytes.
    pub memory_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: String,
    /// When the run started, RFC 3339 (UTC).
    pub date: String,
}

impl Machine {
    /// This host's facts, read from /proc (Linux); `unknown` where a file cannot be read.
    pub fn of_this_host(date: String) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cores = match cpuinfo_cores(&cpuinfo) {
            0 => std::thread::available_parallelism().map_or(0, usize::from),
            n => n,
        };
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        Self {
            cpu_model: cpuinfo_model(&cpuinfo).unwrap_or_else(|| "unknown".to_owned()),
            cores,
            memory_bytes: meminfo_total_bytes(&read("/proc/meminfo")),
            kernel: if kernel.is_empty() {
                "unknown".to_owned()
            } else {
                kernel
            },
            date,
        }
    }
}

/// The first `model name` of a /proc/cpuinfo text.
pub(crate) fn cpuinfo_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Logical CPUs listed in a /proc/cpuinfo text (its `processor` lines).
pub(crate) fn cpuinfo_cores(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count()
}

/// `MemTotal` of a /proc/meminfo text, in bytes (the file says kB, meaning KiB).
pub(crate) fn meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
