//! The coordinator's clock: unix seconds for what is stored and compared (deadlines, expiry,
//! check-ins), unix milliseconds where a few seconds must be measured precisely (job speeds,
//! rate-limit windows). Every rule in `horde-core` takes the time as an argument; these are
//! the only places that read it.

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
