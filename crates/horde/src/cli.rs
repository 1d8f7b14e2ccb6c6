//! The command line.

use crate::settings::{self, FlagOverrides};
use clap::{Args, Parser, Subcommand};
use horde_server::Application;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "horde",
    version,
    about = "A crowdsourced cluster of Stable Diffusion workers, compatible with AI Horde API v2."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator: the AI Horde API v2 server (SQLite in the data directory, or
    /// PostgreSQL shared with other coordinators: --database postgres://…).
    Serve(ServeArgs),
    /// Manage users and their API keys.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Create or upgrade the database (SQLite, or PostgreSQL with --database), then exit.
    Migrate(CommonArgs),
    /// Run a worker: serve Stable Diffusion models by name (downloaded from the model reference and verified) or from local checkpoints, text models (GGUF files on the
    /// built-in engine, or an inference server you run: llama.cpp, vLLM, KoboldCpp, …) and
    /// alchemy forms (NSFW verdicts, CLIP interrogation, captions, post-processors) to a horde.
    Worker(Box<crate::worker_cmd::WorkerArgs>),
    /// Request images from a horde and save them.
    Generate(Box<crate::generate_cmd::GenerateArgs>),
    /// Load-test a coordinator over HTTP: throughput and p50/p99/p999 latency per endpoint,
    /// the coordinator's memory, and the ratios BENCHMARKS.md records. Launches a fresh
    /// `horde serve` for each scenario unless --url is given.
    Bench(BenchArgs),
    /// Model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a tiny, randomly initialised checkpoint of a real architecture, for tests and first
    /// runs: a Stable Diffusion model in the single-file (LDM) layout, or a post-processor in
    /// its published key layout. Every tensor is random; its images are noise.
    Tiny {
        /// sd15, sd2, sdxl (each with -inpainting for an inpainting UNet: sd15-inpainting, or
        /// -controlnet for a ControlNet of that architecture: sd15-controlnet); or
        /// a post-processor: esrgan_x4, esrgan_x2, compact_x4, retinaface, gfpgan, codeformer,
        /// restoreformer, u2netp
        #[arg(long)]
        arch: String,
        /// Output .safetensors file
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random weights
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert a pickled PyTorch checkpoint (.ckpt, .pt, .pth), which the engine does not load,
    /// to a single .safetensors file of the same tensors (EMA copies and non-tensor entries
    /// left out). Nothing in the pickle is run. The worker converts the ones it downloads.
    Convert {
        /// The pickled checkpoint
        src: PathBuf,
        /// Output .safetensors file [default: SRC with the extension .safetensors]
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where the configuration comes from; shared by every command that opens the database.
#[derive(Args)]
struct CommonArgs {
    /// TOML config file (default: ./horde.toml when it exists). Env vars HORDE_… and flags override it.
    #[arg(long, short = 'c', env = "HORDE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the SQLite database (horde.sqlite) and images [default: .]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The database: a postgres://user:password@host/db URL (several coordinators may share
    /// one), or a SQLite file path [default: horde.sqlite in the data directory; config
    /// database.url, env HORDE_DATABASE__URL]
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

impl CommonArgs {
    fn overrides(&self) -> FlagOverrides {
        FlagOverrides {
            data_dir: self.data_dir.clone(),
            database: self
                .database
                .clone()
                .map(|url| settings::DatabaseFlag { url }),
            ..Default::default()
        }
    }
}

impl CommonArgs {
    /// The configuration for a command that only opens the database.
    fn load(self) -> anyhow::Result<horde_server::config::ServerConfig> {
        let overrides = self.overrides();
        settings::load(
            self.config.as_deref(),
            settings::flags_layer(overrides, false, false),
        )
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on [default: 127.0.0.1:7001]
    #[arg(long)]
    listen: Option<String>,
    /// Base URL clients and workers use to reach this server (for upload/download links)
    #[arg(long)]
    public_url: Option<String>,
    /// Enable POST /api/v2/dev/test-user for loopback callers (test harnesses only)
    #[arg(long)]
    enable_test_users: bool,
    /// Turn off the per-endpoint rate limits (load tests only)
    #[arg(long)]
    no_rate_limits: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Scenarios to run (default: all): heartbeat, pop-empty, async, pop-queued, pop-workers, mixed,
    /// pop-waiters (the pop rate with and without 5 000 clients waiting on ?wait=)
    scenarios: Vec<String>,
    /// Drive the coordinator at this URL instead of launching one per scenario (it must run with
    /// --enable-test-users and --no-rate-limits; no memory figures). Repeat it for several
    /// coordinators of one horde: calls go to each in turn
    #[arg(long)]
    url: Vec<String>,
    /// Launch the coordinators on this PostgreSQL server (a URL any database of it; each
    /// scenario gets a new database there) instead of SQLite
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// How many coordinator processes to launch on the PostgreSQL database (calls go to each
    /// in turn, as behind a load balancer)
    #[arg(long, default_value_t = 1, requires = "postgres")]
    coordinators: usize,
    /// A run of seconds with small sizes (CI), instead of the full sizes (100 000 queued
    /// requests, 10 000 workers, 5-second phases)
    #[arg(long)]
    smoke: bool,
    /// Seconds each measured phase lasts [default: 5, 0.5 with --smoke]
    #[arg(long)]
    secs: Option<f64>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user and print its new API key (shown once; only its hash is stored).
    Create {
        /// The user's name (shown as name#id)
        name: String,
        /// Make the user a moderator (implies trusted)
        #[arg(long)]
        moderator: bool,
        /// Make the user trusted
        #[arg(long)]
        trusted: bool,
        /// Starting kudos
        #[arg(long, default_value_t = 0.0)]
        kudos: f64,
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::User {
            command:
                UserCommand::Create {
                    name,
                    moderator,
                    trusted,
                    kudos,
                    common,
                },
        } => {
            let config = common.load()?;
            let created = horde_server::offline::create_user_offline(
                &config, &name, moderator, trusted, kudos,
            )
            .await?;
            eprintln!(
                "Created user {} (id {}). Its API key is shown only this once:",
                created.user.alias(),
                created.user.id
            );
            println!("{}", created.api_key);
            Ok(())
        }
        // The worker keeps freed memory for its next job unless told to save memory
        // (`low_memory`): `worker_cmd::run`.
        Command::Worker(args) => crate::worker_cmd::run(*args).await,
        Command::Generate(args) => crate::generate_cmd::run(*args).await,
        Command::Bench(args) => bench(args).await,
        Command::Model {
            command: ModelCommand::Tiny { arch, out, seed },
        } => crate::worker_cmd::write_tiny(&arch, &out, seed),
        Command::Model {
            command: ModelCommand::Convert { src, out },
        } => convert_model(&src, out),
        Command::Migrate(common) => {
            let config = common.load()?;
            let mode = horde_server::offline::migrate_offline(&config).await?;
            println!(
                "database {} is up to date (journal mode {mode})",
                config.database_location().redacted()
            );
            Ok(())
        }
    }
}

/// `horde model convert`: converts a pickled checkpoint and says what it wrote.
fn convert_model(src: &std::path::Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| src.with_extension("safetensors"));
    anyhow::ensure!(
        out != src,
        "{}: is already a .safetensors file; name another --out",
        src.display()
    );
    let summary = horde_diffusion::pickled::convert_to_safetensors(src, &out)?;
    let skipped = if summary.skipped.is_empty() {
        String::new()
    } else {
        format!(" ({})", summary.skipped.join("; "))
    };
    println!(
        "converted {} to {}: {} tensors, {} skipped{skipped}, {:.1} MB ({} bytes)",
        src.display(),
        out.display(),
        summary.tensors,
        summary.skipped.len(),
        summary.bytes as f64 / 1e6,
        summary.bytes
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = FlagOverrides {
        listen: args.listen,
        public_url: args.public_url,
        ..args.common.overrides()
    };
    let config = settings::load(
        args.common.config.as_deref(),
        settings::flags_layer(overrides, args.enable_test_users, args.no_rate_limits),
    )?;
    let database = config.database_location().redacted();
    let app = Application::build(config).await?;
    println!(
        "horde coordinator listening on http://{} (database {})",
        app.local_addr(),
        database
    );
    println!("API docs: http://{}/api/", app.local_addr());
    println!("Dashboard: http://{}/", app.local_addr());
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut sizes = if args.smoke {
        horde_bench::Sizes::smoke()
    } else {
        horde_bench::Sizes::full()
    };
    if let Some(secs) = args.secs {
        sizes.secs = secs;
    }
    let target = if args.url.is_empty() {
        horde_bench::Target::Launch {
            binary: std::env::current_exe()?,
            postgres: args.postgres,
            coordinators: args.coordinators,
        }
    } else {
        horde_bench::Target::Urls(args.url)
    };
    let outcomes = horde_bench::run(&target, &sizes, &args.scenarios).await?;
    horde_bench::print_ratios(&horde_bench::ratios(&outcomes, &sizes));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// URL-safe keys can start with '-'; they must not be taken for a flag.
    #[test]
    fn api_keys_starting_with_a_dash_are_values() {
        let key = "-Abcdefghijklmnopqrstu";
        assert!(Cli::try_parse_from(["horde", "generate", "a cat", "--api-key", key]).is_ok());
        assert!(Cli::try_parse_from(["horde", "worker", "--api-key", key, "--name", "w"]).is_ok());
    }
}
