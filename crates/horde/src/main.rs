//! `horde`: the one binary. Parses arguments and environment, then hands over to the library
//! crates; nothing else happens here.

mod cli;
mod generate_cmd;
mod settings;
mod worker_cmd;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same place in its v2 and v3 option lists).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Tells the allocator to keep freed memory for reuse instead of handing it back to the
/// system: the engine frees and allocates maps of hundreds of MiB at every layer, and each
/// fresh page costs a fault and a clear (a fifth of a UNet step's time here; BENCHMARKS.md).
/// A worker reaches the same peak at every job, so keeping it costs nothing more at the
/// peak. The engine bench does the same (`horde-diffusion/benches/engine.rs`).
pub fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; the value is a plain integer.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::run(cli).await
}
