//! The ControlNet is read off its tensors (family, widths, hint encoder), refuses a model of
//! another family naming its file, scales its map as ComfyUI does, and in the pipeline steers
//! only the conditional half: at strength 0 the images are exactly the uncontrolled ones.

use super::*;
use crate::tiny::{
    tiny_config, tiny_controlnet_config, write_tiny_checkpoint, write_tiny_controlnet, TinyArch,
};
use crate::{Generation, Model, SamplerKind};

const ARCHS: [TinyArch; 3] = [TinyArch::Sd15, TinyArch::Sd2, TinyArch::Sdxl];

fn load(arch: TinyArch, dir: &Path) -> ControlNet {
    let path = dir.join(format!("{arch:?}_controlnet.safetensors"));
    write_tiny_controlnet(arch, &path, 3).unwrap();
    ControlNet::load(&path, &LoadOptions::default()).unwrap()
}

#[test]
fn the_family_and_shapes_are_read_off_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let net = load(arch, dir.path());
        assert_eq!(net.config(), &tiny_controlnet_config(arch), "{arch:?}");
        assert_eq!(net.config().hint_downsamples(), 3);
        net.check_fits(&tiny_config(arch)).unwrap();
    }
}

#[test]
fn a_controlnet_of_another_family_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let net = load(arch, dir.path());
        for other in ARCHS.into_iter().filter(|o| *o != arch) {
            let err = net.check_fits(&tiny_config(other)).unwrap_err().to_string();
            assert!(err.contains(&format!("{arch:?}_controlnet")), "{err}");
            assert!(err.contains("cannot control this"), "{err}");
        }
    }
    let checkpoint = dir.path().join("model.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &checkpoint, 1).unwrap();
    let err = ControlNet::load(&checkpoint, &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("not a ControlNet"),
        "a checkpoint is not a ControlNet: {err}"
    );
}

#[test]
fn the_map_is_scaled_nearest_exact_after_a_centre_crop() {
    let map = RgbImage::from_fn(6, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
    assert_eq!(
        scale_map(&map, 6, 4).unwrap(),
        map,
        "the same size is the identity"
    );
    let half = scale_map(&map, 3, 2).unwrap();
    let picked: Vec<[u8; 3]> = half.pixels().map(|p| p.0).collect();
    assert_eq!(
        picked,
        [
            [1, 1, 0],
            [3, 1, 0],
            [5, 1, 0],
            [1, 3, 0],
            [3, 3, 0],
            [5, 3, 0]
        ]
    );
    // 6×4 to a square: one column cropped off each side, then 4×4 to 2×2.
    let square = scale_map(&map, 2, 2).unwrap();
    let picked: Vec<[u8; 3]> = square.pixels().map(|p| p.0).collect();
    assert_eq!(picked, [[2, 1, 0], [4, 1, 0], [2, 3, 0], [4, 3, 0]]);
    // A strip far thinner than the target: its centre crop is empty.
    let strip = RgbImage::new(1000, 1);
    assert!(scale_map(&strip, 64, 64).is_none());
    assert!(scale_map(&strip, 1000, 1).is_some());
}

fn job() -> Generation {
    Generation {
        prompt: "a lighthouse".into(),
        negative_prompt: "fog".into(),
        width: 64,
        height: 64,
        steps: 3,
        cfg_scale: 5.0,
        sampler: SamplerKind::Euler,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![7],
        prompts: Vec::new(),
        embeddings: Vec::new(),
    }
}

/// For SD 1.5 and SDXL (whose ControlNet takes the conditional half of the size vector too).
#[test]
fn control_steers_the_image_and_strength_zero_is_none() {
    for (arch, other) in [
        (TinyArch::Sd15, TinyArch::Sdxl),
        (TinyArch::Sdxl, TinyArch::Sd15),
    ] {
        control_steers(arch, other);
    }
}

fn control_steers(arch: TinyArch, other: TinyArch) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("model.safetensors");
    write_tiny_checkpoint(arch, &checkpoint, 4).unwrap();
    let model = Model::load(&checkpoint, &LoadOptions::default(), &mut |_| {}).unwrap();
    let net = Arc::new(load(arch, dir.path()));
    let map = RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    });
    let run = |strength: f64| {
        let control = Control {
            net: net.clone(),
            map: map.clone(),
            strength,
        };
        model
            .generate_controlled(&job(), None, None, Some(&control), &mut |_, _| {})
            .unwrap()
    };
    let plain = model.generate(&job(), &mut |_, _| {}).unwrap();
    assert_eq!(run(0.0), plain, "{arch:?}: strength 0 adds zeros");
    assert_ne!(run(1.0), plain, "{arch:?}: the control changes the image");
    let refused = |control: &Control| {
        model
            .generate_controlled(&job(), None, None, Some(control), &mut |_, _| {})
            .unwrap_err()
            .to_string()
    };
    let wrong_family = Control {
        net: Arc::new(load(other, dir.path())),
        map: map.clone(),
        strength: 1.0,
    };
    let err = refused(&wrong_family);
    assert!(err.contains(&format!("{other:?}_controlnet")), "{err}");
    let strip = Control {
        net,
        map: RgbImage::new(1000, 1),
        strength: 1.0,
    };
    let err = refused(&strip);
    assert!(err.contains("control map (1000×1)"), "{err}");
}

#[test]
fn the_unconditional_half_gets_no_residuals() {
    let dir = tempfile::tempdir().unwrap();
    let net = load(TinyArch::Sd15, dir.path());
    let control = Control {
        net: Arc::new(net),
        map: RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 3, y as u8 * 2, 7])),
        strength: 0.8,
    };
    let pass = control
        .for_pass((64, 64), DType::F32, &Device::Cpu)
        .unwrap();
    let input = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let timesteps = Tensor::new(&[500f32, 500.0], &Device::Cpu).unwrap();
    let context = Tensor::randn(0f32, 1.0, (2, 5, 32), &Device::Cpu).unwrap();
    let cond = Conditioning {
        context: &context,
        vector: None,
    };
    let r = pass.guided_residuals(&input, &timesteps, &cond).unwrap();
    let abs_sum = |t: &Tensor| {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for t in r.down.iter().chain([&r.mid]) {
        assert_eq!(abs_sum(&t.narrow(0, 0, 1).unwrap()), 0.0);
        assert!(abs_sum(&t.narrow(0, 1, 1).unwrap()) > 0.0);
    }
}

/// A difference ControlNet (own weights minus the base UNet's, plus the `difference` marker)
/// loaded with its base is the full ControlNet; without a base it is refused.
#[test]
fn a_difference_controlnet_adds_its_base_models_weights() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &base, 1).unwrap();
    let full = load(TinyArch::Sd15, dir.path());
    let base_tensors = candle_core::safetensors::load(&base, &Device::Cpu).unwrap();
    let mut diff = candle_core::safetensors::load(full.path(), &Device::Cpu).unwrap();
    let mut offsets = 0;
    for (name, tensor) in diff.iter_mut() {
        let rest = name.strip_prefix(CONTROLNET_PREFIX).unwrap();
        if let Some(b) = base_tensors.get(&format!("{UNET_PREFIX}{rest}")) {
            *tensor = (&*tensor - b).unwrap();
            offsets += 1;
        }
    }
    assert!(
        offsets > 50,
        "the input and middle blocks are offsets: {offsets}"
    );
    diff.insert(
        DIFFERENCE_MARKER.into(),
        Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    );
    let diff_path = dir.path().join("diff_control.safetensors");
    candle_core::safetensors::save(&diff, &diff_path).unwrap();
    let err = ControlNet::load(&diff_path, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("difference ControlNet"), "{err}");
    let restored = ControlNet::load_with_base(&diff_path, &base, &LoadOptions::default()).unwrap();
    let wrong_base = dir.path().join("other.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &wrong_base, 2).unwrap();
    let other =
        ControlNet::load_with_base(&diff_path, &wrong_base, &LoadOptions::default()).unwrap();
    let xs = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[300f32], &Device::Cpu).unwrap();
    let context = Tensor::randn(0f32, 1.0, (1, 5, 32), &Device::Cpu).unwrap();
    let hint = Tensor::rand(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let cond = Conditioning {
        context: &context,
        vector: None,
    };
    let mid = |net: &ControlNet| net.forward(&xs, &t, &cond, &hint, 1.0).unwrap().mid;
    let miss = |a: &Tensor, b: &Tensor| {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(miss(&mid(&restored), &mid(&full)) < 1e-4);
    assert!(miss(&mid(&other), &mid(&full)) > 0.1, "the base matters");
}
