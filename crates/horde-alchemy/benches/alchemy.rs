//! The `caption` and `interrogation` forms' speed beside transformers' (issue 28, point 7), on
//! random-weight checkpoints of the real models that `tools/engine-bench/alchemy_model.py` writes
//! (BLIP captioning large, CLIP ViT-L/14); `tools/engine-bench/alchemy_bench.py` times the same
//! work with transformers. BENCHMARKS.md has both.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p horde-alchemy --bench alchemy -- --part caption|interrogate
//! [--dir DIR] [--repeats 3] [--purge] [--terms N]`
//!
//! One part per process, so that the peak RSS printed at the end (`VmHWM`) is the part's own:
//!
//! * `caption`: [`Captioner::caption`] of a 512² image with the horde's settings (its payload
//!   defaults, a fixed seed) on BLIP loaded at the horde's 512² ([`HORDE_IMAGE_SIZE`]). With
//!   random weights the end token is as unlikely as any other, so every caption runs to
//!   `max_length`: the form's worst case.
//! * `interrogate`: [`Interrogator::interrogate`] of a 512² image (CLIP's image embedding and the
//!   ranking against the seven term lists); the one-off embedding of the 7465 terms, which a
//!   worker pays once per model, is timed separately (once, before the warm-up).
//!
//! Times: the fastest and the median of `--repeats` runs after one untimed warm-up. The bench
//! allocates as the `horde` binary's worker does (mimalloc, freed memory kept; `--purge` leaves
//! mimalloc's default, which hands freed memory back). Memory: the resident size after loading,
//! then the peak of the forms themselves (the peak is reset after loading) and the process's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use horde_alchemy::caption::{CaptionSettings, Captioner, SeededDraws, HORDE_IMAGE_SIZE};
use horde_alchemy::clip::Clip;
use horde_alchemy::interrogate::{Interrogator, TermLists};
use image::RgbImage;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The caption's seed (any fixed value: the sampled words change, not the work).
const SEED: u64 = 2890;
/// The benchmark image's side.
const SIDE: u32 = 512;

/// As the worker does (`keep_freed_memory` in `crates/horde/src/main.rs`): freed memory is kept
/// for reuse (mimalloc's `purge_delay`, option 15, set to -1).
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; the value is a plain integer.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) }
}

/// The value after `--name`, or `default` (cargo adds its own `--bench`, which is skipped).
fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// A memory figure of `/proc/self/status` in MB: `VmHWM` (the peak so far) or `VmRSS` (now).
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// After loading: the resident memory now and the peak the loading reached; then the peak is
/// reset to the current RSS (`/proc/self/clear_refs`), so that the one printed at the end is
/// the forms' own. Returns the loading's peak.
fn report_load(what: &str, secs: f64) -> f64 {
    let peak = status_mb("VmHWM:");
    println!(
        "candle  load {what}: {secs:.2} s, RSS {:.0} MB after it (peak {peak:.0} MB)",
        status_mb("VmRSS:")
    );
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
    peak
}

/// A deterministic 512² picture with detail at every scale (alchemy_bench.py's `bench_image`).
fn bench_image() -> RgbImage {
    RgbImage::from_fn(SIDE, SIDE, |x, y| {
        image::Rgb([
            ((x * 7 + y * 3) % 256) as u8,
            ((x * y) % 256) as u8,
            ((x + 2 * y) % 256) as u8,
        ])
    })
}

/// Seconds of `run`, `repeats` times after one untimed warm-up.
fn timed(repeats: usize, mut run: impl FnMut()) -> Vec<f64> {
    run();
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect()
}

/// One line: the fastest and the median run.
fn report(what: &str, secs: &[f64]) {
    let mut sorted = secs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    println!(
        "candle  {what:28} fastest {:8.3} s, median {median:8.3} s ({} runs)",
        sorted[0],
        sorted.len()
    );
}

fn caption(dir: &Path, repeats: usize) -> f64 {
    let started = Instant::now();
    let captioner = Captioner::load_at(
        &dir.join("blip-large"),
        &Device::Cpu,
        Some(HORDE_IMAGE_SIZE),
    )
    .unwrap_or_else(|e| panic!("{e} (write it with tools/engine-bench/alchemy_model.py)"));
    let load_peak = report_load("BLIP large", started.elapsed().as_secs_f64());
    let image = bench_image();
    let settings = CaptionSettings::horde(&serde_json::json!({}), SEED).expect("the defaults");
    // The ids of one caption (the same work as `caption`, untimed): how long captions run.
    let embeds = captioner
        .vision_embeds(&captioner.pixel_values(&image).expect("pixels"))
        .expect("vision");
    let ids = captioner
        .generate_ids(&embeds, &settings, &mut SeededDraws::new(SEED))
        .expect("generate");
    println!(
        "candle  caption of {} ids (max_length {}, the prompt's included)",
        ids.len(),
        settings.max_length
    );
    let secs = timed(repeats, || {
        captioner.caption(&image, &settings).expect("caption");
    });
    report("caption, 512²", &secs);
    load_peak
}

/// The horde's term lists, or their first `--terms N` terms each (for quick profiles of the
/// interrogation alone; the recorded runs take them whole).
fn term_lists() -> TermLists {
    let horde = TermLists::horde();
    match arg("--terms", "all").parse::<usize>() {
        Ok(n) => TermLists::new(
            horde
                .lists()
                .iter()
                .map(|(name, terms)| (name.clone(), terms.iter().take(n).cloned().collect()))
                .collect(),
        ),
        Err(_) => horde,
    }
}

fn interrogate(dir: &Path, repeats: usize) -> f64 {
    let started = Instant::now();
    let clip = Clip::load(&dir.join("clip-vit-large-patch14"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (write it with tools/engine-bench/alchemy_model.py)"));
    let load_peak = report_load("CLIP ViT-L/14", started.elapsed().as_secs_f64());
    let interrogator = Interrogator::new(clip, term_lists());
    let started = Instant::now();
    interrogator.list_embeds().expect("term embeddings");
    let terms = started.elapsed().as_secs_f64();
    println!(
        "candle  {:28} {terms:8.3} s (once per model; {} terms)",
        "term embeddings",
        term_lists().len()
    );
    let image = bench_image();
    let secs = timed(repeats, || {
        interrogator.interrogate(&image).expect("interrogate");
    });
    report("interrogation, 512²", &secs);
    load_peak
}

fn main() {
    let purge = std::env::args().any(|a| a == "--purge");
    if !purge {
        keep_freed_memory();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let dir = PathBuf::from(arg("--dir", &format!("{home}/.cache/horde/alchemy-bench")));
    let repeats: usize = arg("--repeats", "3").parse().expect("--repeats: a number");
    let part = arg("--part", "caption");
    println!(
        "horde-alchemy (candle 0.11.1), {} threads",
        candle_core::utils::get_num_threads()
    );
    let load_peak = match part.as_str() {
        "caption" => caption(&dir, repeats),
        "interrogate" => interrogate(&dir, repeats),
        other => panic!("--part {other}: caption or interrogate"),
    };
    let since_load = status_mb("VmHWM:");
    println!(
        "candle  peak RSS {:.0} MB (after loading: {since_load:.0} MB)",
        load_peak.max(since_load)
    );
}
