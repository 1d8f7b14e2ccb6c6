//! What the worker runs on, measured at start, and the memory plan that follows from it.
//!
//! The report ([`detect`]) goes to the horde in every pop (`hardware`, our extension field) so
//! that `/workers/{id}` and the dashboard show what a worker is. The plan ([`plan_memory`])
//! turns the memory the device has into the settings an owner would otherwise have to guess:
//! how much the loaded models may hold, the largest image and the batch size.

use horde_api::worker::WorkerHardware;

/// Activation memory a job takes per output pixel and image of the batch, in f32: from
/// BENCHMARKS.md, an SD 1.5 512² step peaks 0.57 GB above its weights and the VAE decode
/// 1.3 GB above its own (≈ 5 KB a pixel); rounded up for the text encoders and the
/// allocator's slack. Half-precision weights halve it.
pub const ACTIVATION_BYTES_PER_PIXEL_F32: u64 = 6 * 1024;
/// The largest image a worker offers by default (SDXL's native 1024²).
pub const DEFAULT_MAX_PIXELS_CAP: u64 = 1024 * 1024;
/// The smallest image a worker offers (the horde's smallest job is 64×64; below 256² a worker
/// serves almost no request).
pub const MIN_PLANNED_PIXELS: u64 = 256 * 256;
/// The largest batch a worker offers by default.
pub const DEFAULT_MAX_AMOUNT: u32 = 4;
/// The share of the machine's memory the worker plans with by default (the rest is the
/// system's, the other kinds' networks and the allocator's).
pub const DEFAULT_MEMORY_SHARE: f64 = 0.75;

/// The machine as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cpu: String,
    pub cpu_cores: u32,
    pub ram_bytes: u64,
    /// The GPU's name and memory, when the engine runs on one.
    pub gpu: Option<(String, u64)>,
}

/// Measures the machine the engine runs on (`device`: `cpu`, `cuda` or `cuda:N`).
pub fn detect(device: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpu: cpu_model(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        ram_bytes: mem_total(&meminfo).unwrap_or(0),
        gpu: device.starts_with("cuda").then(|| gpu_of(device)),
    }
}

/// The machine as measured once for this process (the first caller's `device` decides
/// whether a GPU is asked about).
pub fn measured(device: &str) -> &'static Machine {
    static MACHINE: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
    MACHINE.get_or_init(|| detect(device))
}

/// The report a pop carries.
pub fn report(machine: &Machine, device: &str, dtype: &str, load_secs: u32) -> WorkerHardware {
    WorkerHardware {
        device: device.chars().take(40).collect(),
        cpu: machine.cpu.chars().take(200).collect(),
        cpu_cores: machine.cpu_cores,
        ram_bytes: machine.ram_bytes,
        gpu: machine
            .gpu
            .as_ref()
            .map(|(name, _)| name.chars().take(200).collect()),
        vram_bytes: machine.gpu.as_ref().map(|(_, bytes)| *bytes),
        engine: engine_name(),
        dtype: dtype.chars().take(10).collect(),
        load_secs: load_secs.min(horde_api::worker::MAX_LOAD_SECS),
    }
}

/// This worker's engine and version.
pub fn engine_name() -> String {
    format!("horde-worker {} (candle engine)", env!("CARGO_PKG_VERSION"))
}

/// `model name` of `/proc/cpuinfo` (x86), or `Model`/`Hardware` on ARM boards.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The GPU's name and memory from `nvidia-smi` (the driver's own tool); a GPU it cannot
/// describe is reported by its device name, with no memory known.
fn gpu_of(device: &str) -> (String, u64) {
    let index = device.strip_prefix("cuda:").unwrap_or("0");
    let answer = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            index,
        ])
        .output();
    let parsed = answer.ok().filter(|o| o.status.success()).and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (name, mib) = text.lines().next()?.rsplit_once(',')?;
        Some((
            name.trim().to_string(),
            mib.trim().parse::<u64>().ok()? << 20,
        ))
    });
    parsed.unwrap_or_else(|| (format!("CUDA device {index}"), 0))
}

/// The owner's settings the plan starts from; `None`: measure.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Wishes {
    /// The memory the worker may use on the device that holds the weights, in bytes.
    pub budget_bytes: Option<u64>,
    pub max_pixels: Option<u64>,
    pub amount: Option<u32>,
}

/// What the worker will do with its memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// The memory planned with, in bytes.
    pub budget_bytes: u64,
    /// What the loaded models may hold together (the budget less one job's activations).
    pub models_bytes: u64,
    pub max_pixels: u64,
    pub amount: u32,
    /// Why, in words, for the start-up log and `--check`.
    pub reasons: Vec<String>,
}

/// Plans the memory of a device with `device_bytes` (the machine's RAM on the CPU, the GPU's
/// memory on a GPU), whose largest model takes `largest_model` bytes loaded at a dtype of
/// `dtype_bytes` per value. The owner's wishes win; what they leave open is derived: the
/// largest image (a multiple of 64², at most 1024²) and batch that fit beside the largest model.
pub fn plan_memory(
    device_bytes: u64,
    largest_model: u64,
    dtype_bytes: u64,
    wishes: Wishes,
) -> MemoryPlan {
    let mut reasons = Vec::new();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let budget = match wishes.budget_bytes {
        Some(bytes) => {
            reasons.push(format!("memory budget {:.1} GiB (set)", gib(bytes)));
            bytes
        }
        None => {
            let bytes = (device_bytes as f64 * DEFAULT_MEMORY_SHARE) as u64;
            reasons.push(format!(
                "memory budget {:.1} GiB: {:.0} % of the device's {:.1} GiB",
                gib(bytes),
                DEFAULT_MEMORY_SHARE * 100.0,
                gib(device_bytes)
            ));
            bytes
        }
    };
    let per_pixel = ACTIVATION_BYTES_PER_PIXEL_F32 * dtype_bytes.clamp(2, 4) / 4;
    let room = budget.saturating_sub(largest_model);
    let amount_for_size = wishes.amount.unwrap_or(1).max(1) as u64;
    let max_pixels = match wishes.max_pixels {
        Some(pixels) => {
            reasons.push(format!("max_pixels {pixels} (set)"));
            pixels
        }
        None => {
            let fit = room / (per_pixel * amount_for_size);
            let squared = (fit / (64 * 64)) * (64 * 64);
            let pixels = squared.clamp(MIN_PLANNED_PIXELS, DEFAULT_MAX_PIXELS_CAP);
            reasons.push(format!(
                "max_pixels {pixels} (≈{0}×{0}): {1:.1} GiB beside the largest model ({2:.1} GiB) at ≈{3} KB a pixel{4}",
                (pixels as f64).sqrt() as u64,
                gib(room),
                gib(largest_model),
                per_pixel / 1024,
                if squared < MIN_PLANNED_PIXELS { "; below the smallest useful size, kept at 256² (jobs may run out of memory)" } else { "" }
            ));
            pixels
        }
    };
    let amount = match wishes.amount {
        Some(amount) => {
            reasons.push(format!("amount {amount} (set)"));
            amount
        }
        None => {
            let fit = room / (per_pixel * max_pixels).max(1);
            let amount = (fit as u32).clamp(1, DEFAULT_MAX_AMOUNT);
            reasons.push(format!(
                "amount {amount}: batches of that many {max_pixels}-pixel images fit"
            ));
            amount
        }
    };
    let activations = per_pixel * max_pixels * u64::from(amount);
    let models_bytes = budget.saturating_sub(activations).max(largest_model);
    reasons.push(format!(
        "loaded models may hold {:.1} GiB (the budget less one batch's {:.1} GiB of activations)",
        gib(models_bytes),
        gib(activations)
    ));
    MemoryPlan {
        budget_bytes: budget,
        models_bytes,
        max_pixels,
        amount,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_machine_is_read_from_proc() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
        );
        assert_eq!(
            mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        let here = detect("cpu");
        assert!(here.cpu_cores >= 1 && here.ram_bytes > GIB, "{here:?}");
        assert!(here.gpu.is_none());
        let report = report(&here, "cpu", "f32", 7);
        assert_eq!(report.load_secs, 7);
        assert!(report.engine.starts_with("horde-worker "));
    }

    #[test]
    fn a_big_machine_offers_large_images_and_batches_a_small_one_small() {
        // 24 GiB, SD 1.5 in f32 (4.3 GB): 18 GiB budget, ≈13.7 GiB beside the model.
        let big = plan_memory(24 * GIB, 4_300_000_000, 4, Wishes::default());
        assert_eq!(big.max_pixels, DEFAULT_MAX_PIXELS_CAP);
        assert_eq!(big.amount, 2, "{:?}", big.reasons);
        // 8 GiB and SDXL in f16 (5.1 GB): 6 GiB budget, ≈0.9 GiB beside.
        let small = plan_memory(8 * GIB, 5_100_000_000, 2, Wishes::default());
        assert!(small.max_pixels < 768 * 768, "{:?}", small.reasons);
        assert_eq!(small.max_pixels % (64 * 64), 0);
        assert_eq!(small.amount, 1);
        assert!(small.models_bytes >= 5_100_000_000);
    }

    #[test]
    fn the_owner_s_settings_win_and_are_said_to() {
        let wishes = Wishes {
            budget_bytes: Some(2 * GIB),
            max_pixels: Some(512 * 512),
            amount: Some(3),
        };
        let plan = plan_memory(64 * GIB, GIB / 2, 4, wishes);
        assert_eq!(
            (plan.budget_bytes, plan.max_pixels, plan.amount),
            (2 * GIB, 262_144, 3)
        );
        assert!(plan.reasons.iter().filter(|r| r.contains("(set)")).count() == 3);
        // Activations of 3 × 512² f32 images take 4.5 GiB: the models keep room for the largest.
        assert_eq!(plan.models_bytes, GIB / 2);
    }
}
