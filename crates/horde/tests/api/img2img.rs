//! Requests with a source image, and hires fix, end to end: the real coordinator hands the
//! sources out as signed URLs, the real worker downloads them and runs them on tiny checkpoints
//! of the real SD 1.5 architecture (an ordinary one and an inpainting one), and each image
//! comes back at the requested size and is the one the engine makes from the same inputs: so
//! the source, its mask, the strengths and hires fix all reached the engine. Painting keeps the
//! source's pixels outside the mask.

use crate::helpers::*;
use crate::worker::{owner_key, start_worker, wait_done, worker_config, MODEL};
use horde_api::image::{ImageRequest, SourceProcessing};
use horde_diffusion::{HiresFix, SourceImage, SourceProcessing as Paint};
use image::{GrayImage, ImageFormat, RgbImage, RgbaImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// The AI Horde name of the inpainting checkpoint (an inpainting model in the reference).
const INPAINTING_MODEL: &str = "stable_diffusion_inpainting";
const SEED: u64 = 42;
const STEPS: u32 = 4;

struct Checkpoints {
    ordinary: PathBuf,
    inpainting: PathBuf,
}

fn checkpoints(dir: &Path) -> Checkpoints {
    use horde_diffusion::tiny::{
        write_tiny_checkpoint, write_tiny_inpainting_checkpoint, TinyArch,
    };
    let ordinary = dir.join("tiny-sd15.safetensors");
    let inpainting = dir.join("tiny-sd15-inpainting.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &ordinary, 3).unwrap();
    write_tiny_inpainting_checkpoint(TinyArch::Sd15, &inpainting, 5).unwrap();
    Checkpoints {
        ordinary,
        inpainting,
    }
}

/// A worker serving both checkpoints, large enough for hires fix's 576² images.
async fn start_painting_worker(app: &TestApp, checkpoints: &Checkpoints) -> WorkerHandle {
    let mut config = worker_config(&app.root, owner_key(app).await, &checkpoints.ordinary);
    config.models = BTreeMap::from([
        (MODEL.to_string(), checkpoints.ordinary.clone()),
        (INPAINTING_MODEL.to_string(), checkpoints.inpainting.clone()),
    ]);
    config.max_pixels = Some(640 * 640);
    config.amount = Some(1);
    start_worker(config)
}

/// A coordinator, a requester with kudos, and a worker serving both checkpoints; the folder
/// the checkpoints are written in lives as long as the last.
async fn painting() -> (
    TestApp,
    horde_client::Client,
    Checkpoints,
    WorkerHandle,
    TempDir,
) {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoints(dir.path());
    let (requester, _) = app.user("requester", 1000.0).await;
    let running = start_painting_worker(&app, &checkpoints).await;
    (app, requester, checkpoints, running, dir)
}

/// A smooth image (gradients: lossy WebP keeps it closely), with `transparent` columns clear.
fn source(width: u32, height: u32, transparent: impl Fn(u32) -> bool) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        let alpha = if transparent(x) { 0 } else { 255 };
        image::Rgba([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            160,
            alpha,
        ])
    })
}

/// A request for one image on `model`, deterministic (Euler, fixed seed), returned inline.
fn request(model: &str, width: u32, height: u32) -> ImageRequest {
    deterministic_request(model, (width, height), STEPS, SEED)
}

/// What the worker's engine makes of the same inputs, run here.
fn expected(
    checkpoint: &Path,
    width: u32,
    height: u32,
    source: Option<&SourceImage>,
    hires_fix: Option<&HiresFix>,
) -> RgbImage {
    let generation = deterministic_generation((width, height), STEPS, SEED);
    cpu_model(checkpoint)
        .generate_with(&generation, source, hires_fix, &mut |_, _| {})
        .unwrap()
        .remove(0)
}

/// The one image of a finished request, decoded.
async fn the_image(requester: &horde_client::Client, id: &str) -> RgbImage {
    let status = wait_done(requester, id).await;
    assert_eq!(status.generations.len(), 1, "{status:?}");
    let generation = &status.generations[0];
    assert!(
        generation.gen_metadata.is_empty(),
        "nothing was ignored: {:?}",
        generation.gen_metadata
    );
    image::load_from_memory_with_format(&base64_decode(&generation.img), ImageFormat::WebP)
        .unwrap()
        .to_rgb8()
}

fn everywhere(_: u32, _: u32) -> bool {
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_and_hires_fix_come_back_at_their_size_as_the_engine_makes_them() {
    let (app, requester, checkpoints, running, _dir) = painting().await;

    // img2img: a 96×64 source for a 64×64 image (stretched to it), half the schedule.
    let opaque = source(96, 64, |_| false);
    let mut img2img = request(MODEL, 64, 64);
    img2img.source_image = Some(png_base64(opaque.clone()));
    img2img.source_processing = SourceProcessing::Img2img;
    img2img.params.denoising_strength = Some(0.5);
    let img2img_id = submitted(&requester, &img2img).await;
    // Hires fix: 576² (SD 1.5 runs it above 512 a side), a first pass at 512².
    let mut hires = request(MODEL, 576, 576);
    hires.params.hires_fix = true;
    hires.params.hires_fix_denoising_strength = Some(0.4);
    let hires_id = submitted(&requester, &hires).await;

    let image = the_image(&requester, &img2img_id).await;
    assert_eq!(image.dimensions(), (64, 64));
    let worker = requester.worker_by_name("tiny-worker").await.unwrap();
    assert!(
        worker.img2img && worker.painting,
        "the worker advertises both"
    );
    let source = SourceImage {
        image: opaque,
        mask: None,
        processing: Paint::Img2Img,
        denoising_strength: 0.5,
    };
    let made = expected(&checkpoints.ordinary, 64, 64, Some(&source), None);
    let difference = luma_difference(&image, &made, everywhere);
    assert!(difference < WEBP_LUMA_TOLERANCE, "img2img: {difference}");
    let stronger = SourceImage {
        denoising_strength: 1.0,
        ..source
    };
    let other = expected(&checkpoints.ordinary, 64, 64, Some(&stronger), None);
    let wrong = luma_difference(&image, &other, everywhere);
    assert!(
        wrong > 3.0 * WEBP_LUMA_TOLERANCE,
        "another strength is another image: {wrong}"
    );

    let image = the_image(&requester, &hires_id).await;
    assert_eq!(image.dimensions(), (576, 576));
    let fix = HiresFix {
        denoising_strength: 0.4,
    };
    let made = expected(&checkpoints.ordinary, 576, 576, None, Some(&fix));
    let difference = luma_difference(&image, &made, everywhere);
    assert!(difference < WEBP_LUMA_TOLERANCE, "hires fix: {difference}");
    let direct = expected(&checkpoints.ordinary, 576, 576, None, None);
    let wrong = luma_difference(&image, &direct, everywhere);
    assert!(
        wrong > 3.0 * WEBP_LUMA_TOLERANCE,
        "a direct generation is another image: {wrong}"
    );

    stopped_after_jobs(running, 2).await;
    app.stop().await;
}

/// Pixels further than twice the feathering from the region `masked` (Chebyshev).
fn far_from(
    masked: impl Fn(u32, u32) -> bool,
    width: u32,
    height: u32,
) -> impl Fn(u32, u32) -> bool {
    let reach = 2 * horde_diffusion::source::FEATHER as i64 + 1;
    let mut far = vec![true; (width * height) as usize];
    for y in 0..height as i64 {
        for x in 0..width as i64 {
            if masked(x as u32, y as u32) {
                for ny in (y - reach).max(0)..(y + reach + 1).min(height as i64) {
                    for nx in (x - reach).max(0)..(x + reach + 1).min(width as i64) {
                        far[(ny * width as i64 + nx) as usize] = false;
                    }
                }
            }
        }
    }
    move |x, y| far[(y * width + x) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpainting_and_outpainting_repaint_only_the_masked_region() {
    let (app, requester, checkpoints, running, _dir) = painting().await;
    let (width, height) = (128, 128);

    // Inpainting with the inpainting model: a mask over the middle square.
    let in_square = |x: u32, y: u32| (48..80).contains(&x) && (48..80).contains(&y);
    let mask = GrayImage::from_fn(width, height, |x, y| {
        image::Luma([if in_square(x, y) { 255 } else { 0 }])
    });
    let opaque = source(width, height, |_| false);
    let mut inpainting = request(INPAINTING_MODEL, width, height);
    inpainting.source_image = Some(png_base64(opaque.clone()));
    inpainting.source_mask = Some(png_base64(mask.clone()));
    inpainting.source_processing = SourceProcessing::Inpainting;
    inpainting.params.denoising_strength = Some(1.0);
    let inpainting_id = submitted(&requester, &inpainting).await;
    // Outpainting with the ordinary model (latent masking): the right half is transparent.
    let right_half = |x: u32, _: u32| x >= width / 2;
    let half_clear = source(width, height, |x| right_half(x, 0));
    let mut outpainting = request(MODEL, width, height);
    outpainting.source_image = Some(png_base64(half_clear.clone()));
    outpainting.source_processing = SourceProcessing::Outpainting;
    outpainting.params.denoising_strength = Some(1.0);
    let outpainting_id = submitted(&requester, &outpainting).await;

    let rgb_of = |image: &RgbaImage| image::DynamicImage::ImageRgba8(image.clone()).to_rgb8();
    for (id, checkpoint, painted, masked, source_image, processing, mask) in [
        (
            &inpainting_id,
            &checkpoints.inpainting,
            &opaque,
            &in_square as &dyn Fn(u32, u32) -> bool,
            &opaque,
            Paint::Inpainting,
            Some(mask.clone()),
        ),
        (
            &outpainting_id,
            &checkpoints.ordinary,
            &half_clear,
            &right_half as &dyn Fn(u32, u32) -> bool,
            &half_clear,
            Paint::Outpainting,
            None,
        ),
    ] {
        let image = the_image(&requester, id).await;
        assert_eq!(image.dimensions(), (width, height), "{processing:?}");
        // The source's own pixels outside the mask's feathered edge.
        let kept = luma_difference(&image, &rgb_of(painted), far_from(masked, width, height));
        assert!(
            kept < WEBP_LUMA_TOLERANCE,
            "{processing:?} outside the mask: {kept}"
        );
        // Repainted inside it: as the engine paints it, and not the source.
        let source = SourceImage {
            image: source_image.clone(),
            mask,
            processing,
            denoising_strength: 1.0,
        };
        let made = expected(checkpoint, width, height, Some(&source), None);
        let inside = luma_difference(&image, &made, masked);
        assert!(
            inside < WEBP_LUMA_TOLERANCE,
            "{processing:?} inside: {inside}"
        );
        let unchanged = luma_difference(&image, &rgb_of(painted), masked);
        assert!(
            unchanged > 4.0 * WEBP_LUMA_TOLERANCE,
            "{processing:?}: the masked region was repainted ({unchanged})"
        );
    }
    stopped_after_jobs(running, 2).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_the_worker_cannot_fetch_faults_the_job_with_the_reason() {
    let (app, requester, _, running, _dir) = painting().await;
    // A source given as a URL goes to the worker as sent; nothing listens at this one.
    let mut unreachable = request(MODEL, 64, 64);
    unreachable.source_image = Some("http://127.0.0.1:9/source.png".into());
    assert!(
        faults(&requester, &unreachable).await,
        "the request faulted after its jobs did"
    );
    stopped_having_faulted(running, 0).await;
    app.stop().await;
}
