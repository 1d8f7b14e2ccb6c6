use super::*;
use crate::config::VaeConfig;
use crate::kernels::test_support::{max_abs, max_difference};
use crate::tiny::{random_tensors, random_var_builder, tiny_config, TinyArch};
use crate::vae::Vae;
use candle_core::D;
use std::collections::HashMap;
use std::path::Path;

/// The largest difference, relative to the largest value of `whole`.
fn relative_difference(banded: &Tensor, whole: &Tensor) -> f32 {
    max_difference(banded, whole) / max_abs(whole)
}

/// A small encoder with the real structure: channel changes (shortcut convolutions) between
/// levels, three downsamplings.
fn small_vae(base_channels: usize) -> Vae {
    let config = VaeConfig {
        base_channels,
        channel_mult: vec![1, 2, 2, 2],
        num_res_blocks: 1,
        latent_channels: 4,
    };
    Vae::new(&config, random_var_builder(11)).unwrap()
}

fn pixels(seeds: &[u64], height: usize, width: usize) -> Tensor {
    // Uniform-ish in [-1, 1]: standard normal noise, halved and clamped.
    let noise = SeededNoise::new(seeds)
        .sample(&[3, height, width], &Device::Cpu)
        .unwrap();
    (noise * 0.5).unwrap().clamp(-1f32, 1f32).unwrap()
}

#[test]
fn a_banded_encode_equals_the_whole_encode() {
    let vae = small_vae(32);
    // 2 images of 44×36 pixels: an odd map (11 rows) at the third level, whose last band
    // reaches no padding row; bands of 2 rows (the smallest), of an odd 7 rows, and whole.
    let pixels = pixels(&[1, 2], 44, 36);
    let whole = vae.encoder.moments_whole(&pixels).unwrap();
    assert_eq!(whole.dims(), [2, 8, 5, 4]);
    for band_pixels in [1, 7 * 36, 44 * 36] {
        let banded = vae.encoder.moments_in_bands(&pixels, band_pixels).unwrap();
        assert_eq!(banded.dims(), whole.dims());
        let off = relative_difference(&banded, &whole);
        assert!(off < 1e-5, "bands of {band_pixels} pixels: off by {off}");
    }
}

#[test]
fn bands_skipping_the_rows_across_their_edges_would_be_seen() {
    // The test above can fail: encoding each band of rows as an image of its own (what
    // reading no neighbour rows amounts to) is far off.
    let vae = small_vae(32);
    let pixels = pixels(&[3], 48, 32);
    let whole = vae.encoder.moments_whole(&pixels).unwrap();
    let halves = [
        pixels.narrow(2, 0, 24).unwrap(),
        pixels.narrow(2, 24, 24).unwrap(),
    ];
    let apart: Vec<Tensor> = halves
        .iter()
        .map(|half| vae.encoder.moments_whole(half).unwrap())
        .collect();
    let apart = Tensor::cat(&apart, 2).unwrap();
    let off = relative_difference(&apart, &whole);
    assert!(off > 1e-2, "off by only {off}");
}

#[test]
fn above_the_threshold_the_encoder_works_in_bands_and_equals_the_whole_encode() {
    assert!(!encodes_in_bands(512, 512));
    assert!(!encodes_in_bands(1024, 511));
    assert!(encodes_in_bands(1024, 512));
    assert!(encodes_in_bands(768, 768));
    // 1024×512, the threshold itself, with the production band size: 8 channels keep it fast
    // in a debug build.
    let vae = small_vae(8);
    let pixels = pixels(&[4], 1024, 512);
    let whole = vae.encoder.moments_whole(&pixels).unwrap();
    let banded = vae.encoder.moments_in_bands(&pixels, BAND_PIXELS).unwrap();
    let off = relative_difference(&banded, &whole);
    assert!(off < 1e-5, "off by {off}");
    let chosen = vae.encoder.distribution(&pixels).unwrap();
    let mean = LatentDistribution::from_moments(&banded).unwrap().mean;
    assert_eq!(max_difference(&chosen.mean, &mean), 0.0, "the banded path");
}

#[test]
fn the_log_variance_is_clamped_and_the_std_is_its_half_exponential() {
    // Two latent channels: means 1 and 2, log-variances 50, -40 (clamped) and 1.
    let moments = Tensor::from_vec(
        vec![
            1f32, 1.0, 1.0, 2.0, 2.0, 2.0, 50.0, -40.0, 1.0, 50.0, -40.0, 1.0,
        ],
        (1, 4, 1, 3),
        &Device::Cpu,
    )
    .unwrap();
    let d = LatentDistribution::from_moments(&moments).unwrap();
    let logvar = d.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(logvar, [20.0, -30.0, 1.0, 20.0, -30.0, 1.0]);
    let std = d
        .std()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!((std[2] - 0.5f32.exp()).abs() < 1e-6, "{std:?}");
    assert!((std[0] - 10f32.exp()).abs() / 10f32.exp() < 1e-6, "{std:?}");
    let noise = Tensor::full(2f32, (1, 2, 1, 3), &Device::Cpu).unwrap();
    let sample = d.sample_with(&noise).unwrap().flatten_all().unwrap();
    let sample = sample.to_vec1::<f32>().unwrap();
    assert!(
        (sample[5] - (2.0 + 2.0 * 0.5f32.exp())).abs() < 1e-5,
        "{sample:?}"
    );
}

#[test]
fn pixels_are_channels_first_in_minus_one_to_one() {
    let mut image = RgbImage::new(3, 2);
    image.put_pixel(0, 0, image::Rgb([0, 255, 51]));
    image.put_pixel(2, 1, image::Rgb([255, 0, 127]));
    let t = pixels_of(&[image], &Device::Cpu).unwrap();
    assert_eq!(t.dims(), [1, 3, 2, 3]);
    let at = |c: usize, y: usize, x: usize| {
        t.get(0)
            .unwrap()
            .get(c)
            .unwrap()
            .get(y)
            .unwrap()
            .get(x)
            .unwrap()
    };
    let value = |c, y, x| at(c, y, x).to_scalar::<f32>().unwrap();
    assert_eq!(value(0, 0, 0), -1.0);
    assert_eq!(value(1, 0, 0), 1.0);
    assert!((value(2, 0, 0) - (51.0 / 127.5 - 1.0)).abs() < 1e-7);
    assert_eq!(value(0, 1, 2), 1.0);
    assert_eq!(value(1, 1, 2), -1.0);
    assert_eq!(value(0, 1, 1), -1.0, "an untouched pixel is black");
}

fn tiny_encoder() -> Vae {
    let config = tiny_config(TinyArch::Sd15);
    let vb = VarBuilder::from_tensors(
        random_tensors(&config, 3).unwrap(),
        DType::F32,
        &Device::Cpu,
    );
    Vae::new(&config.vae, vb.pp("first_stage_model")).unwrap()
}

fn gradient(width: u32, height: u32, shift: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 + shift) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    })
}

#[test]
fn images_encode_to_the_scaled_mean_or_a_seeded_sample_per_image() {
    let vae = tiny_encoder();
    let images = [gradient(32, 24, 0), gradient(32, 24, 90)];
    let encode = |images: &[RgbImage], draw: &LatentDraw, family: Family| {
        encode_images(&vae.encoder, family, images, draw, &Device::Cpu, DType::F32).unwrap()
    };
    let distribution = vae
        .encoder
        .distribution(&pixels_of(&images, &Device::Cpu).unwrap())
        .unwrap();
    let mean = encode(&images, &LatentDraw::Mean, Family::Sd1);
    assert_eq!(mean.dims(), [2, 4, 3, 4]);
    let expected = (&distribution.mean * 0.18215).unwrap();
    assert!(max_difference(&mean, &expected) < 1e-7);
    let xl = encode(&images, &LatentDraw::Mean, Family::Sdxl);
    assert!(max_difference(&xl, &(&distribution.mean * 0.13025).unwrap()) < 1e-7);

    let seeds = LatentDraw::Sample { seeds: vec![5, 6] };
    let sample = encode(&images, &seeds, Family::Sd1);
    let noise = SeededNoise::new(&[5, 6])
        .sample(&[4, 3, 4], &Device::Cpu)
        .unwrap();
    let expected = (distribution.sample_with(&noise).unwrap() * 0.18215).unwrap();
    assert!(max_difference(&sample, &expected) < 1e-6);
    assert!(
        max_difference(&sample, &mean) > 1e-3,
        "a sample is not the mean"
    );
    // The second image alone, with its seed, is the batch's second image.
    let alone = encode(
        &images[1..],
        &LatentDraw::Sample { seeds: vec![6] },
        Family::Sd1,
    );
    let second = sample.narrow(0, 1, 1).unwrap();
    assert!(max_difference(&alone, &second) < 1e-6);
}

#[test]
fn images_the_encoder_cannot_take_are_refused_with_the_reason() {
    let vae = tiny_encoder();
    let refuse = |images: &[RgbImage], draw: LatentDraw| {
        let e = encode_images(
            &vae.encoder,
            Family::Sd1,
            images,
            &draw,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
        e.to_string()
    };
    assert!(refuse(&[], LatentDraw::Mean).contains("no image"));
    assert!(refuse(&[gradient(30, 24, 0)], LatentDraw::Mean).contains("multiple of 8"));
    let mixed = [gradient(32, 24, 0), gradient(24, 32, 0)];
    assert!(refuse(&mixed, LatentDraw::Mean).contains("one size"));
    let two = [gradient(32, 24, 0), gradient(32, 24, 1)];
    let one_seed = LatentDraw::Sample { seeds: vec![1] };
    assert!(refuse(&two, one_seed).contains("one per image"));
}

// ---- Mis-wired encoders against diffusers' fixture ---------------------------------------------

/// The SD 1.x fixture of `tools/sd-fixtures` and the encoder of its checkpoint (seed 22).
fn fixture_and_encoder() -> (HashMap<String, Tensor>, Vae, f32) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_numbers");
    let fixture = candle_core::safetensors::load(dir.join("sd15.safetensors"), &Device::Cpu);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let config = tiny_config(TinyArch::Sd15);
    let vb = VarBuilder::from_tensors(
        random_tensors(&config, 22).unwrap(),
        DType::F32,
        &Device::Cpu,
    );
    let vae = Vae::new(&config.vae, vb.pp("first_stage_model")).unwrap();
    let tolerance = manifest["tolerance"].as_f64().unwrap() as f32;
    (fixture.unwrap(), vae, tolerance)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    d.max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
}

/// Padding on all four sides (what a downsampling with `padding = 1` does, as the UNet's).
fn symmetric_pad(xs: &Tensor) -> Result<Tensor> {
    xs.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)
}

/// The engine's encoder matches the fixture's mean and sample, whole and in bands; with the
/// downsampling padded on every side, without `quant_conv`, or with the std taken as
/// `exp(logvar)` it misses them by more than 100× the tolerance.
#[test]
fn miswired_encoders_miss_diffusers_numbers_by_far() {
    let (fixture, vae, tolerance) = fixture_and_encoder();
    let encoder = &vae.encoder;
    let image = &fixture["vae.image"];
    let noise = &fixture["vae.noise"];
    let (mean, sample) = (&fixture["vae.encoded_mean"], &fixture["vae.encoded_sample"]);
    let miss = |d: &LatentDistribution, std: &Tensor| {
        let s = (&d.mean + (std * noise).unwrap()).unwrap();
        max_abs_diff(&d.mean, mean).max(max_abs_diff(&s, sample))
    };
    let right = encoder.distribution(image).unwrap();
    assert!(miss(&right, &right.std().unwrap()) <= tolerance);
    let banded = LatentDistribution::from_moments(&encoder.moments_in_bands(image, 1).unwrap());
    let banded = banded.unwrap();
    assert!(miss(&banded, &banded.std().unwrap()) <= tolerance);

    let symmetric = encoder.features_whole(image, symmetric_pad).unwrap();
    let symmetric = encoder.quant_conv.forward(&symmetric).unwrap();
    let symmetric = LatentDistribution::from_moments(&symmetric).unwrap();
    let no_quant = encoder.features_whole(image, ldm_pad).unwrap();
    let no_quant = LatentDistribution::from_moments(&no_quant).unwrap();
    let full_exp = right.logvar.exp().unwrap();
    for (name, d, std) in [
        ("symmetric padding", &symmetric, symmetric.std().unwrap()),
        ("no quant_conv", &no_quant, no_quant.std().unwrap()),
        ("std = exp(logvar)", &right, full_exp),
    ] {
        let off = miss(d, &std);
        println!("{name}: misses diffusers by {off:.3e}");
        assert!(off > 100.0 * tolerance, "{name}: misses by only {off}");
    }
}
