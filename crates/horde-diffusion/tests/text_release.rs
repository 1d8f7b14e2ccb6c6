//! Text encoders released between jobs (`LoadOptions::release_text_encoders`, issue 31 point 5)
//! on a tiny random SDXL checkpoint (both encoders): a model with the option makes the images a
//! model holding its encoders makes, bit for bit, with and without a LoRA that changes them;
//! and between jobs it holds none of their weights. What a model holds is measured, not
//! assumed: this test binary runs on an allocator that counts the bytes alive, and the encoders'
//! size is read off the checkpoint.

use candle_core::{DType, Device, Tensor};
use horde_diffusion::parts::{open_checkpoint, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX};
use horde_diffusion::tiny::{write_tiny_checkpoint, TinyArch};
use horde_diffusion::{Generation, LoadOptions, LoraApplication, LoraFile, Model, SamplerKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

/// The system allocator, counting the bytes alive.
struct Counting;

static ALIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this file measure the bytes alive: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alive() -> isize {
    ALIVE.load(Ordering::SeqCst)
}

fn job() -> Generation {
    Generation {
        prompt: "a (red:1.3) lighthouse on a [small] hill".into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 48,
        steps: 3,
        cfg_scale: 7.0,
        sampler: SamplerKind::EulerAncestral,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![3, 4],
        prompts: vec![],
        embeddings: Vec::new(),
    }
}

fn load(path: &Path, dtype: DType, release: bool) -> Model {
    let options = LoadOptions {
        dtype,
        release_text_encoders: release,
        ..LoadOptions::default()
    };
    Model::load(path, &options, &mut |_| {}).expect("the tiny checkpoint loads")
}

fn images(model: &Model) -> Vec<u8> {
    let images = model.generate(&job(), &mut |_, _| {}).unwrap();
    images.into_iter().flat_map(|i| i.into_raw()).collect()
}

/// How many bytes of two images' pixels differ.
fn differing(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// Seeded values in [-1, 1), none zero or one.
fn random(shape: &[usize], seed: u64) -> Tensor {
    let count: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A kohya LoRA changing one MLP layer of each text encoder and nothing else, so that the
/// images it changes are changed through the text encoders alone.
fn text_lora(checkpoint: &Path, dir: &Path) -> Arc<LoraFile> {
    let index = open_checkpoint(checkpoint).unwrap();
    let mut tensors = HashMap::new();
    let layers = [
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            format!("{SDXL_CLIP_L_PREFIX}text_model.encoder.layers.0.mlp.fc1.weight"),
        ),
        (
            "lora_te2_text_model_encoder_layers_0_mlp_fc1",
            format!("{SDXL_CLIP_G_PREFIX}transformer.resblocks.0.mlp.c_fc.weight"),
        ),
    ];
    for (seed, (module, tensor)) in layers.iter().enumerate() {
        let shape = index.shape(tensor).unwrap();
        let seed = 10 * seed as u64;
        let down = random(&[2, shape[1]], seed + 1);
        let up = random(&[shape[0], 2], seed + 2);
        tensors.insert(format!("{module}.lora_down.weight"), down);
        tensors.insert(format!("{module}.lora_up.weight"), up);
    }
    let path = dir.join("text_lora.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    Arc::new(LoraFile::open(&path).unwrap())
}

#[test]
fn released_text_encoders_make_the_same_images_bit_for_bit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl.safetensors");
    write_tiny_checkpoint(TinyArch::Sdxl, &path, 11).unwrap();
    let lora = LoraApplication {
        file: text_lora(&path, dir.path()),
        model_strength: 1.0,
        clip_strength: 0.8,
    };
    for dtype in [DType::F32, DType::BF16] {
        let held = load(&path, dtype, false);
        let released = load(&path, dtype, true);
        let base = images(&held);
        let differ = differing(&images(&released), &base);
        assert_eq!(differ, 0, "{dtype:?}: {differ} bytes differ");
        held.set_loras(std::slice::from_ref(&lora)).unwrap();
        released.set_loras(std::slice::from_ref(&lora)).unwrap();
        let with_lora = images(&held);
        let changed = differing(&with_lora, &base);
        assert!(
            changed > base.len() / 2,
            "{dtype:?}: the LoRA changes {changed} bytes"
        );
        let differ = differing(&images(&released), &with_lora);
        assert_eq!(differ, 0, "{dtype:?}, with the LoRA: {differ} bytes differ");
        released.set_loras(&[]).unwrap();
        let differ = differing(&images(&released), &base);
        assert_eq!(
            differ, 0,
            "{dtype:?}, the LoRA removed: {differ} bytes differ"
        );
    }
}

/// The bytes alive after `make` returns, less those before (what it leaves behind).
fn kept(make: impl FnOnce()) -> isize {
    let before = alive();
    make();
    alive() - before
}

#[test]
fn a_released_model_holds_no_text_encoder_weights_between_jobs() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl.safetensors");
    write_tiny_checkpoint(TinyArch::Sdxl, &path, 12).unwrap();
    let index = open_checkpoint(&path).unwrap();
    let encoder_bytes: usize = index
        .names()
        .filter(|n| n.starts_with(SDXL_CLIP_L_PREFIX) || n.starts_with(SDXL_CLIP_G_PREFIX))
        .map(|n| index.shape(n).unwrap().iter().product::<usize>() * 4)
        .sum();
    drop(index);
    let planned = |release| {
        let options = LoadOptions {
            release_text_encoders: release,
            ..LoadOptions::default()
        };
        Model::inspect(&path, &options).unwrap().1 as usize
    };
    assert_eq!(
        planned(false) - planned(true),
        encoder_bytes,
        "a worker plans without the released encoders"
    );
    // A first job sets up what every job shares (the tokenizer, the thread pool).
    images(&load(&path, DType::F32, false));

    let mut held = None;
    let held_bytes = kept(|| held = Some(load(&path, DType::F32, false)));
    let mut released = None;
    let released_bytes = kept(|| released = Some(load(&path, DType::F32, true)));
    let released = released.unwrap();
    let job_bytes = kept(|| {
        images(&released);
    });
    let encoders = encoder_bytes as isize;
    println!(
        "encoders {encoders} B; a model holding them {held_bytes} B, releasing them \
         {released_bytes} B; a job left {job_bytes} B"
    );
    assert!(
        held_bytes - released_bytes >= encoders,
        "holding the encoders takes {held_bytes} B, releasing them {released_bytes} B: the \
         encoders are {encoders} B"
    );
    assert!(
        job_bytes < encoders / 10,
        "a job left {job_bytes} B alive (the encoders are {encoders} B)"
    );
    drop(held);
}
