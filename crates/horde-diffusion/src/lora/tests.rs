//! The merge's arithmetic and the model's LoRA state on tiny random models; the numbers against
//! diffusers and PEFT are `tests/lora_numbers.rs`'s.

use super::merge::delta;
use super::*;
use crate::kernels::test_support::{max_difference, random};
use crate::tiny::TinyArch;
use crate::{LoadOptions, Model};
use candle_core::Device;
use std::collections::HashMap;

fn adapter(weights: Weights) -> Adapter {
    Adapter {
        network: Network::UNet,
        module: "m".into(),
        key: "lora_unet_m.lora_down.weight".into(),
        weights,
    }
}

/// LoCon's Tucker core: `Δ[o,i,y,x] = scale · Σ up[o,a] · mid[a,b,y,x] · down[b,i]`, summed here
/// term by term.
#[test]
fn a_tucker_core_gives_the_sum_over_both_ranks() {
    let (out, inputs, rank) = (5, 3, 2);
    let down = random(&[rank, inputs, 1, 1], 1, 1.0);
    let up = random(&[out, rank, 1, 1], 2, 1.0);
    let mid = random(&[rank, rank, 3, 3], 3, 1.0);
    let weights = Weights::LowRank {
        down: down.clone(),
        up: up.clone(),
        mid: Some(mid.clone()),
        scale: 0.5,
    };
    let ours = delta(&adapter(weights), &[out, inputs, 3, 3], &Device::Cpu).unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (d, u, m) = (v(&down), v(&up), v(&mid));
    let mut expected = vec![0f32; out * inputs * 9];
    for o in 0..out {
        for i in 0..inputs {
            for tap in 0..9 {
                let mut sum = 0f32;
                for a in 0..rank {
                    for b in 0..rank {
                        sum += u[o * rank + a] * m[(a * rank + b) * 9 + tap] * d[b * inputs + i];
                    }
                }
                expected[(o * inputs + i) * 9 + tap] = 0.5 * sum;
            }
        }
    }
    let expected = Tensor::from_vec(expected, (out, inputs, 3, 3), &Device::Cpu).unwrap();
    assert!(max_difference(&ours, &expected) < 1e-5);
}

/// LoHa: `scale · (w1a · w1b) ⊙ (w2a · w2b)`, a 3×3 convolution's `w1b` flattened.
#[test]
fn loha_is_the_hadamard_product_of_two_low_rank_products() {
    let (out, inputs, rank) = (4, 2, 3);
    let w = |shape: &[usize], seed| random(shape, seed, 1.0);
    let (w1a, w1b, w2a, w2b) = (
        w(&[out, rank], 1),
        w(&[rank, inputs * 9], 2),
        w(&[out, rank], 3),
        w(&[rank, inputs * 9], 4),
    );
    let weights = Weights::Hadamard {
        w1a: w1a.clone(),
        w1b: w1b.clone(),
        w2a: w2a.clone(),
        w2b: w2b.clone(),
        scale: 0.25,
    };
    let ours = delta(&adapter(weights), &[out, inputs, 3, 3], &Device::Cpu).unwrap();
    let expected = ((w1a.matmul(&w1b).unwrap() * w2a.matmul(&w2b).unwrap()).unwrap() * 0.25)
        .unwrap()
        .reshape((out, inputs, 3, 3))
        .unwrap();
    assert_eq!(max_difference(&ours, &expected), 0.0);
    let wrong = delta(
        &adapter(Weights::Hadamard {
            w1a,
            w1b,
            w2a,
            w2b,
            scale: 1.0,
        }),
        &[out, inputs * 9 + 1],
        &Device::Cpu,
    );
    assert!(wrong.unwrap_err().contains("another model family"));
}

/// A tiny SD 1.5 model and a kohya LoRA on two of its layers (a linear and a 3×3 convolution),
/// every tensor random.
fn tiny_model_and_lora(dir: &Path) -> (Model, PathBuf) {
    let checkpoint = dir.join("model.safetensors");
    crate::tiny::write_tiny_checkpoint(TinyArch::Sd15, &checkpoint, 7).unwrap();
    let model = Model::load(&checkpoint, &LoadOptions::default(), &mut |_| {}).unwrap();
    let lora = dir.join("lora.safetensors");
    let mut tensors = HashMap::new();
    let module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    tensors.insert(
        format!("{module}.lora_down.weight"),
        random(&[4, 32], 11, 1.0),
    );
    tensors.insert(
        format!("{module}.lora_up.weight"),
        random(&[32, 4], 12, 1.0),
    );
    tensors.insert(
        format!("{module}.alpha"),
        Tensor::new(2f32, &Device::Cpu).unwrap(),
    );
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    tensors.insert(
        format!("{conv}.lora_down.weight"),
        random(&[2, 32, 3, 3], 13, 1.0),
    );
    tensors.insert(
        format!("{conv}.lora_up.weight"),
        random(&[32, 2, 1, 1], 14, 1.0),
    );
    let te = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    tensors.insert(format!("{te}.lora_down.weight"), random(&[2, 32], 15, 1.0));
    tensors.insert(format!("{te}.lora_up.weight"), random(&[64, 2], 16, 1.0));
    candle_core::safetensors::save(&tensors, &lora).unwrap();
    (model, lora)
}

fn unet_output(model: &Model) -> Tensor {
    let xs = random(&[1, 4, 8, 8], 21, 1.0);
    let context = random(&[1, 5, 32], 22, 1.0);
    let t = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let cond = crate::unet::Conditioning {
        context: &context,
        vector: None,
    };
    unet_forward_now(model, &xs, &t, &cond).unwrap()
}

fn text_output(model: &Model) -> Tensor {
    let tokens = crate::text::WeightedTokens::from_prompt("a red cat");
    encode_text_now(model, &tokens, 1).unwrap().0
}

/// Switching sets merges from the base tensors each time: A, then B, then A again gives A's
/// numbers; the same set twice is a no-op; the empty set gives the base outputs bit for bit.
#[test]
fn sets_switch_from_the_base_and_the_empty_set_restores_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = tiny_model_and_lora(dir.path());
    let file = Arc::new(LoraFile::open(&path).unwrap());
    assert_eq!(file.modules(), 3);
    let (base_unet, base_text) = (unet_output(&model), text_output(&model));
    let set = |model_strength, clip_strength| LoraApplication {
        file: file.clone(),
        model_strength,
        clip_strength,
    };
    model.set_loras(&[set(1.0, 1.0)]).unwrap();
    let (a_unet, a_text) = (unet_output(&model), text_output(&model));
    assert!(
        max_difference(&a_unet, &base_unet) > 1e-3,
        "the LoRA changes the UNet"
    );
    assert!(
        max_difference(&a_text, &base_text) > 1e-3,
        "and the text encoder"
    );
    model.set_loras(&[set(1.0, 1.0)]).unwrap();
    assert_eq!(max_difference(&unet_output(&model), &a_unet), 0.0);
    model.set_loras(&[set(-0.5, 0.0)]).unwrap();
    assert_eq!(
        max_difference(&text_output(&model), &base_text),
        0.0,
        "clip 0"
    );
    assert!(max_difference(&unet_output(&model), &a_unet) > 1e-3);
    model.set_loras(&[set(1.0, 1.0)]).unwrap();
    assert_eq!(
        max_difference(&unet_output(&model), &a_unet),
        0.0,
        "A again"
    );
    assert_eq!(max_difference(&text_output(&model), &a_text), 0.0);
    model.set_loras(&[]).unwrap();
    assert_eq!(
        max_difference(&unet_output(&model), &base_unet),
        0.0,
        "restored"
    );
    assert_eq!(max_difference(&text_output(&model), &base_text), 0.0);
}

/// Two LoRAs add: the same file twice at 0.5 is the file once at 1 (up to rounding).
#[test]
fn several_loras_add_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = tiny_model_and_lora(dir.path());
    let file = Arc::new(LoraFile::open(&path).unwrap());
    let at = |s| LoraApplication {
        file: file.clone(),
        model_strength: s,
        clip_strength: s,
    };
    model.set_loras(&[at(1.0)]).unwrap();
    let once = unet_output(&model);
    model.set_loras(&[at(0.5), at(0.5)]).unwrap();
    assert!(max_difference(&unet_output(&model), &once) < 1e-5);
}

/// Another family's LoRA, a corrupt file and an unsupported adapter are errors naming the file
/// and why; after a refused set the model runs without LoRAs.
#[test]
fn wrong_family_corrupt_and_unsupported_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, good) = tiny_model_and_lora(dir.path());
    let base = unet_output(&model);
    let file = Arc::new(LoraFile::open(&good).unwrap());
    let good_set = [LoraApplication {
        file,
        model_strength: 1.0,
        clip_strength: 1.0,
    }];
    model.set_loras(&good_set).unwrap();
    // An SDXL LoRA: its input block 7 (SDXL's level 2, with attention) does not exist here.
    let sdxl = dir.path().join("sdxl.safetensors");
    let module = "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k";
    let tensors = HashMap::from([
        (
            format!("{module}.lora_down.weight"),
            random(&[4, 2048], 1, 1.0),
        ),
        (
            format!("{module}.lora_up.weight"),
            random(&[640, 4], 2, 1.0),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &sdxl).unwrap();
    let file = Arc::new(LoraFile::open(&sdxl).unwrap());
    let err = model
        .set_loras(&[LoraApplication {
            file,
            model_strength: 1.0,
            clip_strength: 1.0,
        }])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sdxl.safetensors") && err.contains("another model family"),
        "{err}"
    );
    // The right names with the wrong shapes (an SD 2.x LoRA: a wider context).
    let wide = dir.path().join("wide.safetensors");
    let module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
    let tensors = HashMap::from([
        (
            format!("{module}.lora_down.weight"),
            random(&[4, 1024], 1, 1.0),
        ),
        (format!("{module}.lora_up.weight"), random(&[32, 4], 2, 1.0)),
    ]);
    candle_core::safetensors::save(&tensors, &wide).unwrap();
    let err = model
        .set_loras(&[LoraApplication {
            file: Arc::new(LoraFile::open(&wide).unwrap()),
            model_strength: 1.0,
            clip_strength: 1.0,
        }])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wide.safetensors") && err.contains("[32, 1024]"),
        "{err}"
    );
    assert_eq!(
        max_difference(&unet_output(&model), &base),
        0.0,
        "left without LoRAs"
    );
    model.set_loras(&good_set).unwrap();
    assert!(
        max_difference(&unet_output(&model), &base) > 1e-3,
        "the good set applies again"
    );
    // A truncated file.
    let bytes = std::fs::read(&good).unwrap();
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let err = LoraFile::open(&corrupt).unwrap_err().to_string();
    assert!(
        err.contains("corrupt.safetensors") && err.contains("truncated"),
        "{err}"
    );
    // LoKr.
    let lokr = dir.path().join("lokr.safetensors");
    let tensors = HashMap::from([("lora_unet_x.lokr_w1".to_string(), random(&[2, 2], 1, 1.0))]);
    candle_core::safetensors::save(&tensors, &lokr).unwrap();
    let err = LoraFile::open(&lokr).unwrap_err().to_string();
    assert!(
        err.contains("lokr.safetensors") && err.contains("LoKr"),
        "{err}"
    );
    // Not a LoRA at all.
    let err = LoraFile::open(&dir.path().join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no LoRA, LoCon or LoHa weights"), "{err}");
}

/// Why the base tensors are kept rather than the change subtracted: in f32, `(w + Δ) − Δ` is
/// not `w` for many weights, so an unmerge by subtraction would fail the bit-for-bit
/// restoration `tests/lora_numbers.rs` asserts (and drift further with every switch).
#[test]
fn subtracting_the_change_would_not_restore_the_base_exactly() {
    let w = random(&[64, 64], 31, 1.0);
    let change = (random(&[64, 4], 32, 1.0)
        .matmul(&random(&[4, 64], 33, 1.0))
        .unwrap()
        * 0.3)
        .unwrap();
    let unmerged = ((&w + &change).unwrap() - &change).unwrap();
    let bits = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    let differing = bits(&w)
        .iter()
        .zip(bits(&unmerged))
        .filter(|(a, b)| **a != *b)
        .count();
    // 355 of the 4096 here; one would already fail the bit-for-bit test.
    assert!(
        differing > 64 * 64 / 100,
        "{differing} of 4096 weights differ"
    );
}

/// [`tiny_model_and_lora`]'s checkpoint loaded in bf16, and the set of its LoRA at full
/// strength.
fn tiny_bf16_model_and_set(dir: &Path) -> (Model, Vec<LoraApplication>) {
    let (_, path) = tiny_model_and_lora(dir);
    let options = LoadOptions {
        dtype: candle_core::DType::BF16,
        ..LoadOptions::default()
    };
    let model = Model::load(&dir.join("model.safetensors"), &options, &mut |_| {}).unwrap();
    let set = vec![LoraApplication {
        file: Arc::new(LoraFile::open(&path).unwrap()),
        model_strength: 1.0,
        clip_strength: 1.0,
    }];
    (model, set)
}

/// A half-precision model: the merge runs in f32 and stores bf16; removing the set is exact.
#[test]
fn a_bf16_model_merges_in_its_own_dtype_and_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, set) = tiny_bf16_model_and_set(dir.path());
    let half = |t: Tensor| t.to_dtype(candle_core::DType::BF16).unwrap();
    let xs = half(random(&[1, 4, 8, 8], 21, 1.0));
    let context = half(random(&[1, 5, 32], 22, 1.0));
    let t = half(Tensor::new(&[500f32], &Device::Cpu).unwrap());
    let run = || {
        let cond = crate::unet::Conditioning {
            context: &context,
            vector: None,
        };
        let out = unet_forward_now(&model, &xs, &t, &cond).unwrap();
        assert_eq!(out.dtype(), candle_core::DType::BF16);
        out.to_dtype(candle_core::DType::F32).unwrap()
    };
    let base = run();
    model.set_loras(&set).unwrap();
    assert!(max_difference(&run(), &base) > 1e-2, "the LoRA applies");
    model.set_loras(&[]).unwrap();
    assert_eq!(max_difference(&run(), &base), 0.0);
}

/// A LoRA set's UNet is rebuilt, but on the base tensors of every layer the set leaves alone,
/// and those layers share the base ones' kept bf16 weights (`kernels::kept::Kept::of`): its
/// last convolution's, made as the model loaded, are there before its first step, not made
/// (and held) a second time. (The modified layers are on new tensors, with weights of their
/// own: `a_bf16_model_merges_in_its_own_dtype_and_restores_exactly` sees the LoRA apply.)
#[test]
fn a_lora_sets_unet_shares_the_kept_weights_of_the_layers_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (model, set) = tiny_bf16_model_and_set(dir.path());
    model.set_loras(&set).unwrap();
    let merged = model.unet_now();
    assert!(matches!(merged, Active::Merged(_)), "the UNet was rebuilt");
    let kernels = crate::kernels::bf16_gemm::available();
    assert_eq!(merged.out_conv().keeps_weights(), kernels);
}
