//! The worker as an alchemist against the real coordinator: `horde_worker::alchemy::Alchemist`
//! on the tiny checkpoints of the safety checker, CLIP, BLIP and a ×2 RealESRGAN serves one
//! interrogation of four forms end to end (source downloaded from the signed URL, the upscaled
//! image uploaded before "R2" is submitted), and the requester reads each result back. Then the
//! censor: an SFW image request whose image the tiny checker flags comes back censored and
//! uncharged, while the same request with an image it passes is delivered and charged.

use crate::helpers::*;
use horde_api::image::ImageRequest;
use horde_api::interrogation::{InterrogationForm, InterrogationRequest};
use horde_diffusion::SourceImage;
use horde_worker::alchemy::horde_alchemy::safety::SafetyChecker;
use horde_worker::alchemy::{Alchemist, AlchemyForms, Served};
use horde_worker::backend::encode_webp;
use horde_worker::censor::{censor_webp, Censored};
use horde_worker::job::{Job, Unrunnable};
use horde_worker::{Backend, Worker, WorkerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

fn alchemy_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../horde-alchemy/tests/fixtures")
}

fn x2_upscaler() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-postprocess/tests/fixtures/upscalers/realesrgan_x2plus.safetensors")
}

/// The flower the tiny checker flags, and the lake it passes (its fixtures' verdicts).
fn fixture_image(name: &str) -> image::RgbImage {
    image::open(alchemy_fixtures().join(format!("safety/{name}.png")))
        .unwrap()
        .to_rgb8()
}

fn cpu() -> horde_diffusion::LoadOptions {
    horde_diffusion::LoadOptions::named("cpu", "f32").unwrap()
}

fn tiny_checker() -> Arc<SafetyChecker> {
    let dir = alchemy_fixtures().join("safety");
    Arc::new(SafetyChecker::load(&dir, &cpu().device).unwrap())
}

async fn owner_key(app: &TestApp) -> String {
    let request = horde_api::user::TestUserRequest {
        username: "alchemy owner".into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos: 0.0,
    };
    let created = app.anonymous().create_test_user(&request).await.unwrap();
    created.api_key
}

fn alchemist_config(app: &TestApp, key: &str) -> WorkerConfig {
    WorkerConfig {
        url: app.root.clone(),
        api_key: key.into(),
        name: "tiny".into(),
        alchemy_forms: ["nsfw", "interrogation", "caption", "RealESRGAN_x2plus"]
            .map(String::from)
            .to_vec(),
        safety_checker: Some(alchemy_fixtures().join("safety")),
        clip: Some(alchemy_fixtures().join("clip")),
        blip: Some(alchemy_fixtures().join("blip/model")),
        post_processors: BTreeMap::from([("RealESRGAN_x2plus".to_string(), x2_upscaler())]),
        ..WorkerConfig::default()
    }
}

#[tokio::test]
async fn an_alchemist_serves_four_forms_end_to_end() {
    let app = spawn_app().await;
    let (requester, _) = app.user("curious", 100.0).await;
    let key = owner_key(&app).await;
    let config = alchemist_config(&app, &key);
    let checker = tiny_checker();
    let (forms, failures) = AlchemyForms::load(&config, Some(checker.clone()), &cpu().device);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        forms.names(),
        ["RealESRGAN_x2plus", "caption", "interrogation", "nsfw"]
    );
    let alchemist = Alchemist::new(config, Arc::new(forms));
    assert_eq!(alchemist.serve_once().await.unwrap(), Served::Idle);

    let flower = fixture_image("flower");
    let asked = requester
        .interrogate_async(&InterrogationRequest {
            forms: ["caption", "interrogation", "nsfw", "RealESRGAN_x2plus"]
                .map(|name| InterrogationForm {
                    name: name.into(),
                    payload: None,
                })
                .to_vec(),
            source_image: png_base64(flower.clone()),
            trusted_workers: false,
            slow_workers: true,
            extra_slow_workers: false,
            webhook: None,
        })
        .await
        .unwrap();
    let mut served = Vec::new();
    while served.len() < 4 {
        match alchemist.serve_once().await.unwrap() {
            Served::Forms(forms) => served.extend(forms),
            Served::Idle => panic!("only {} forms were handed out: {served:?}", served.len()),
        }
    }
    for form in &served {
        assert!(form.result.is_ok(), "{form:?}");
        assert!(form.reward.is_some_and(|r| r > 0.0), "{form:?}");
    }
    assert_eq!(alchemist.serve_once().await.unwrap(), Served::Idle);
    assert_eq!(alchemist.pending_count(), 0);

    let status = requester.interrogate_status(&asked.id).await.unwrap();
    assert_eq!(status.state, "done", "{status:?}");
    let result = |name: &str| {
        let form = status.forms.iter().find(|f| f.form == name).unwrap();
        assert_eq!(form.worker_name.as_deref(), Some("tiny-alchemy"));
        form.result.clone().unwrap()
    };
    // The verdict is the checker's on the same image (the flower: flagged).
    let verdict = checker.check(&flower).unwrap();
    assert!(verdict.nsfw, "the tiny checker flags the flower");
    assert_eq!(result("nsfw"), serde_json::json!({"nsfw": verdict.nsfw}));
    // The interrogation: the horde's seven lists, five ranked terms each.
    let lists = result("interrogation")["interrogation"].clone();
    let names: Vec<&String> = lists.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 7, "{lists}");
    for list in [
        "tags",
        "sites",
        "artists",
        "flavors",
        "mediums",
        "movements",
        "techniques",
    ] {
        let terms = lists[list].as_array().unwrap();
        assert_eq!(terms.len(), 5, "{list}: {terms:?}");
        assert!(terms[0]["text"].is_string() && terms[0]["confidence"].is_number());
    }
    assert!(result("caption")["caption"].is_string());
    // The upscaled image: twice the flower's size, a WebP that decodes.
    let url = result("RealESRGAN_x2plus")["RealESRGAN_x2plus"]
        .as_str()
        .unwrap()
        .to_string();
    let webp = http()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let upscaled = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP).unwrap();
    assert_eq!(
        (upscaled.width(), upscaled.height()),
        (2 * flower.width(), 2 * flower.height())
    );
    app.stop().await;
}

/// The size of the SFW requests: near the fixtures' own (the horde asks for multiples of 64).
const PAINTED: (u32, u32) = (320, 256);

/// `image` at the size of the SFW requests, as the engine's WebP.
fn painted_webp(image: &image::RgbImage) -> Vec<u8> {
    let (width, height) = PAINTED;
    let resized = image::imageops::resize(image, width, height, image::imageops::Triangle);
    encode_webp(&image::DynamicImage::ImageRgb8(resized)).unwrap()
}

/// An engine whose output the test chooses: each job's images are `image` at the job's size, as
/// WebP. Stands in for the diffusion engine only, so that the checker's verdict is known.
struct Painted {
    image: image::RgbImage,
}

impl Backend for Painted {
    fn models(&self) -> Vec<String> {
        vec!["stable_diffusion".into()]
    }

    fn run(
        &self,
        job: &Job,
        _source: Option<&SourceImage>,
        _on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable> {
        let size = (job.generation.width, job.generation.height);
        assert_eq!(size, (PAINTED.0 as usize, PAINTED.1 as usize));
        Ok(vec![painted_webp(&self.image); job.ids.len()])
    }
}

/// Serves one SFW request whose image is `image` on a censoring worker; the status and what
/// the requester paid.
async fn sfw_request_of(image: image::RgbImage) -> (horde_api::image::RequestStatus, f64) {
    let app = spawn_app().await;
    let (requester, _) = app.user("careful", 100.0).await;
    let config = WorkerConfig {
        url: app.root.clone(),
        api_key: owner_key(&app).await,
        name: "censor".into(),
        models: BTreeMap::from([("stable_diffusion".to_string(), PathBuf::new())]),
        poll_interval_secs: 0.1,
        ..WorkerConfig::default()
    };
    let worker = Worker::with_censor(config, Arc::new(Painted { image }), Some(tiny_checker()));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { worker.run(stopped).await });
    let mut request: ImageRequest = small_request("a garden", 1, false);
    (request.params.width, request.params.height) = PAINTED;
    request.nsfw = false;
    request.censor_nsfw = true;
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    let status = crate::worker::wait_done(&requester, &id).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let kudos = requester.find_user().await.unwrap().kudos;
    app.stop().await;
    (status, 100.0 - kudos)
}

#[tokio::test]
async fn an_sfw_image_the_checker_flags_comes_back_censored_and_uncharged() {
    let (flower, lake) = (fixture_image("flower"), fixture_image("lake"));
    // The checker sees the WebP the engine gives: the flower's is flagged, the lake's is not.
    let checker = tiny_checker();
    let Censored::Replaced(placeholder) = censor_webp(&checker, painted_webp(&flower)).unwrap()
    else {
        panic!("the flower's WebP is not flagged");
    };
    let black = image::load_from_memory(&placeholder).unwrap().to_rgb8();
    assert_eq!(black.dimensions(), PAINTED);
    assert!(black.pixels().all(|p| p.0 == [0, 0, 0]));
    assert!(matches!(
        censor_webp(&checker, painted_webp(&lake)).unwrap(),
        Censored::Clean(_)
    ));

    let (status, paid) = sfw_request_of(flower).await;
    let generation = &status.generations[0];
    assert!(generation.censored, "state {}", generation.state);
    assert_eq!(generation.state, "censored");
    assert!(generation
        .gen_metadata
        .iter()
        .any(|m| m.kind == "censorship" && m.value == "nsfw"));
    let image = image::load_from_memory(&base64_decode(&generation.img)).unwrap();
    assert!(image.to_rgb8().pixels().all(|p| p.0 == [0, 0, 0]));
    assert_eq!(
        paid, 1.0,
        "only the activation fee: a censored image costs nothing"
    );

    let (status, paid) = sfw_request_of(lake).await;
    let generation = &status.generations[0];
    assert!(
        !generation.censored && generation.state == "ok",
        "state {}, censored {}",
        generation.state,
        generation.censored
    );
    assert!(paid > 1.0, "a delivered image is charged: {paid}");
}
