//! What the engine's benches share: the worker's allocator and its setting, their few flags,
//! and the peak memory they report.

/// As the worker does (`keep_freed_memory` in `crates/horde/src/main.rs`): freed memory is
/// kept for reuse (mimalloc's `purge_delay`, option 15, set to -1).
#[allow(unsafe_code)]
pub(crate) fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; the value is a plain integer.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) }
}

/// The value after flag `name` on the command line.
pub(crate) fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The process's peak resident memory so far, in MB (`VmHWM`).
pub(crate) fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
