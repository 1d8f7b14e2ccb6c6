//! `horde generate`: submits an image request, shows its queue position, ETA and progress,
//! saves the images and prints where. Ctrl-C cancels the request and keeps what finished.

use anyhow::Context;
use base64::Engine;
use clap::Args;
use horde_api::image::{
    ControlType, ImageRequest, Lora, RequestStatus, Sampler, SeedInput, SourceProcessing,
    TextualInversion,
};
use horde_client::Client;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// The prompt; text after " ### " is the negative prompt
    prompt: String,
    /// Number of images
    #[arg(short, long, default_value_t = 1)]
    n: u32,
    /// A model the request accepts (repeatable) [default: any]
    #[arg(long = "model")]
    models: Vec<String>,
    #[arg(long, default_value_t = 512)]
    width: u32,
    #[arg(long, default_value_t = 512)]
    height: u32,
    #[arg(long, default_value_t = 30)]
    steps: u32,
    /// AI Horde sampler name (k_euler, k_euler_a, DDIM, …)
    #[arg(long, default_value = "k_euler_a")]
    sampler: String,
    #[arg(long, default_value_t = 7.0)]
    cfg_scale: f64,
    /// Seed (any text; digits are a number)
    #[arg(long)]
    seed: Option<String>,
    /// A source image (WebP, PNG or JPEG) to start from: image-to-image, or with
    /// --source-processing inpainting/outpainting, painting into its mask or transparency
    #[arg(long, value_name = "FILE")]
    source_image: Option<PathBuf>,
    /// The mask of the source image (white = repaint), the source image's size
    #[arg(long, value_name = "FILE", requires = "source_image")]
    source_mask: Option<PathBuf>,
    /// What to do with the source image: img2img, inpainting or outpainting
    #[arg(long, default_value = "img2img", requires = "source_image", value_parser = processing_named)]
    source_processing: SourceProcessing,
    /// How much of the source is repainted, 0.01 to 1 [default: the worker's, 0.75]
    #[arg(long, requires = "source_image")]
    denoising_strength: Option<f64>,
    /// Generate at the model's native size first, then upscale and refine: large images without
    /// doubled subjects
    #[arg(long)]
    hires_fix: bool,
    /// The strength of hires fix's second pass, 0.01 to 1 [default: the worker's, 0.65]
    #[arg(long, requires = "hires_fix")]
    hires_fix_denoising_strength: Option<f64>,
    /// A LoRA, as NAME[:MODEL[:CLIP]] (its CivitAI name or id, and its strengths on the model
    /// and the text encoder, 1 by default; repeatable, at most 5)
    #[arg(long = "lora", value_name = "NAME[:MODEL[:CLIP]]", value_parser = lora_named)]
    loras: Vec<Lora>,
    /// Put the LoRAs' trigger words into the prompt: any (one of them), all, or a trigger
    #[arg(long, requires = "loras")]
    lora_trigger: Option<String>,
    /// A textual inversion, as NAME[:prompt|negprompt[:STRENGTH]] (where to put it; repeatable)
    #[arg(long = "ti", value_name = "NAME[:WHERE[:STRENGTH]]", value_parser = ti_named)]
    tis: Vec<TextualInversion>,
    /// ControlNet: canny, depth, hed, normal, openpose, seg, scribble, fakescribbles or hough;
    /// needs --source-image
    #[arg(long, requires = "source_image", value_parser = control_named)]
    control_type: Option<ControlType>,
    /// How strongly the control map steers, 0.01 to 3 [default: 1]
    #[arg(long, requires = "control_type")]
    control_strength: Option<f64>,
    /// The source image is the control map itself (not a picture to draw it from)
    #[arg(long, requires = "control_type")]
    image_is_control: bool,
    /// Return the control map drawn from the source image instead of generating
    #[arg(long, requires = "control_type")]
    return_control_map: bool,
    /// Directory for the images
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The horde to use
    #[arg(long, env = "HORDE_URL", default_value = "http://127.0.0.1:7001")]
    url: String,
    /// Your API key [default: anonymous]
    #[arg(long, env = "HORDE_API_KEY", allow_hyphen_values = true, default_value = horde_api::ANONYMOUS_API_KEY, hide_default_value = true)]
    api_key: String,
    /// Give up (and cancel) after this many seconds
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
}

pub(crate) async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let request = build_request(&args)?;
    let client = Client::new(&args.url, args.api_key.clone());
    let accepted = client
        .generate_async(&request)
        .await
        .context("the horde refused the request")?;
    let id = accepted
        .id
        .context("the horde accepted the request without an id")?;
    for warning in &accepted.warnings {
        eprintln!("warning ({}): {}", warning.code, warning.message);
    }
    eprintln!("request {id} queued ({} kudos)", accepted.kudos);
    let status = tokio::select! {
        status = wait_for(&client, &id, args.n, Duration::from_secs(args.timeout)) => status?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("cancelling…");
            client.cancel(&id).await?
        }
    };
    let saved = save_images(&client, &status, &args.out, &id).await?;
    for path in &saved {
        println!("{}", path.display());
    }
    if saved.len() < args.n as usize {
        anyhow::bail!("{} of {} images arrived", saved.len(), args.n);
    }
    Ok(())
}

fn build_request(args: &GenerateArgs) -> anyhow::Result<ImageRequest> {
    let mut request = ImageRequest::new(&args.prompt);
    let p = &mut request.params;
    p.n = args.n;
    p.width = args.width;
    p.height = args.height;
    p.steps = Some(args.steps);
    p.cfg_scale = args.cfg_scale;
    p.sampler_name =
        serde_json::from_value::<Sampler>(serde_json::Value::String(args.sampler.clone()))
            .map_err(|_| anyhow::anyhow!("unknown sampler '{}'", args.sampler))?;
    p.seed = args.seed.clone().map(SeedInput::Text);
    p.denoising_strength = args.denoising_strength;
    p.hires_fix = args.hires_fix;
    p.hires_fix_denoising_strength = args.hires_fix_denoising_strength;
    request.source_image = args.source_image.as_deref().map(base64_of).transpose()?;
    request.source_mask = args.source_mask.as_deref().map(base64_of).transpose()?;
    request.source_processing = args.source_processing;
    p.loras = args.loras.clone();
    for lora in &mut p.loras {
        lora.inject_trigger = args.lora_trigger.clone();
    }
    p.tis = args.tis.clone();
    p.control_type = args.control_type;
    p.control_strength = args.control_strength;
    p.image_is_control = args.image_is_control;
    p.return_control_map = args.return_control_map;
    if !args.models.is_empty() {
        request.models = args.models.clone();
    }
    request.r2 = false;
    request
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {:?}", e.message, e.errors.unwrap_or_default()))?;
    Ok(request)
}

/// A file's bytes as base64, as a request carries a source image.
fn base64_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `NAME[:MODEL[:CLIP]]`.
fn lora_named(text: &str) -> Result<Lora, String> {
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default().to_string();
    let strength = |part: Option<&str>| -> Result<f64, String> {
        part.map_or(Ok(1.0), |s| {
            s.parse().map_err(|_| format!("'{s}' is not a strength"))
        })
    };
    let model = strength(parts.next())?;
    let clip = strength(parts.next())?;
    if name.is_empty() || parts.next().is_some() {
        return Err(format!("'{text}': expected NAME[:MODEL[:CLIP]]"));
    }
    serde_json::from_value(serde_json::json!({"name": name, "model": model, "clip": clip}))
        .map_err(|e| e.to_string())
}

/// `NAME[:prompt|negprompt[:STRENGTH]]`.
fn ti_named(text: &str) -> Result<TextualInversion, String> {
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default();
    let inject = parts.next();
    let strength = match parts.next() {
        Some(s) => s.parse().map_err(|_| format!("'{s}' is not a strength"))?,
        None => 1.0,
    };
    let valid_place = inject.is_none_or(|w| matches!(w, "prompt" | "negprompt"));
    if name.is_empty() || !valid_place || parts.next().is_some() {
        return Err(format!(
            "'{text}': expected NAME[:prompt|negprompt[:STRENGTH]]"
        ));
    }
    Ok(TextualInversion {
        name: name.into(),
        inject_ti: inject.map(str::to_string),
        strength,
    })
}

fn control_named(name: &str) -> Result<ControlType, String> {
    serde_json::from_value(serde_json::Value::String(name.into())).map_err(|_| {
        format!("'{name}': expected canny, depth, hed, normal, openpose, seg, scribble, fakescribbles or hough")
    })
}

fn processing_named(name: &str) -> Result<SourceProcessing, String> {
    match name {
        "img2img" => Ok(SourceProcessing::Img2img),
        "inpainting" => Ok(SourceProcessing::Inpainting),
        "outpainting" => Ok(SourceProcessing::Outpainting),
        other => Err(format!(
            "'{other}': expected img2img, inpainting or outpainting"
        )),
    }
}

/// Polls `check` with a progress bar until done, then fetches the images.
async fn wait_for(
    client: &Client,
    id: &str,
    n: u32,
    timeout: Duration,
) -> anyhow::Result<RequestStatus> {
    let bar = indicatif::ProgressBar::new(u64::from(n));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} images {msg} [{elapsed}]")
            .expect("valid template"),
    );
    let started = Instant::now();
    loop {
        let check = client.check(id).await?;
        bar.set_position(u64::from(check.finished));
        bar.set_message(if check.waiting > 0 {
            format!(
                "queue position {}, about {} s",
                check.queue_position, check.wait_time
            )
        } else {
            format!("{} in progress", check.processing)
        });
        if check.done || check.faulted {
            bar.finish_and_clear();
            return Ok(client.status(id).await?);
        }
        if !check.is_possible {
            bar.set_message("no worker can serve this request at the moment".to_string());
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            eprintln!("timed out; cancelling");
            return Ok(client.cancel(id).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn save_images(
    client: &Client,
    status: &RequestStatus,
    out: &Path,
    id: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut saved = Vec::new();
    for (i, generation) in status.generations.iter().enumerate() {
        if generation.state != "ok" {
            eprintln!("image {i} {}: {}", generation.id, generation.state);
            continue;
        }
        let bytes =
            if generation.img.starts_with("http://") || generation.img.starts_with("https://") {
                client.download(&generation.img).await?
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(&generation.img)
                    .context("the image is not valid base64")?
            };
        let path = out.join(format!("{id}-{i}.webp"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        saved.push(path);
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        generate: GenerateArgs,
    }

    fn request(args: &[&str]) -> anyhow::Result<ImageRequest> {
        let cli = Cli::try_parse_from(std::iter::once("generate").chain(args.iter().copied()))?;
        build_request(&cli.generate)
    }

    #[test]
    fn source_images_and_hires_fix_go_into_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let (image, mask) = (dir.path().join("in.png"), dir.path().join("mask.png"));
        std::fs::write(&image, b"image bytes").unwrap();
        std::fs::write(&mask, b"mask bytes").unwrap();
        let painted = request(&[
            "a cat",
            "--source-image",
            image.to_str().unwrap(),
            "--source-mask",
            mask.to_str().unwrap(),
            "--source-processing",
            "inpainting",
            "--denoising-strength",
            "0.4",
        ])
        .unwrap();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(painted.source_image, Some(b64(b"image bytes")));
        assert_eq!(painted.source_mask, Some(b64(b"mask bytes")));
        assert_eq!(painted.source_processing, SourceProcessing::Inpainting);
        assert_eq!(painted.params.denoising_strength, Some(0.4));
        assert!(!painted.params.hires_fix);

        let hires = request(&[
            "a cat",
            "--hires-fix",
            "--hires-fix-denoising-strength",
            "0.3",
        ])
        .unwrap();
        assert!(hires.params.hires_fix && hires.source_image.is_none());
        assert_eq!(hires.params.hires_fix_denoising_strength, Some(0.3));
    }

    #[test]
    fn loras_tis_and_control_go_into_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("in.png");
        std::fs::write(&image, b"image bytes").unwrap();
        let made = request(&[
            "a cat",
            "--lora",
            "58390:0.5",
            "--lora",
            "Detail Tweaker",
            "--lora-trigger",
            "any",
            "--ti",
            "7808:negprompt:0.8",
            "--source-image",
            image.to_str().unwrap(),
            "--control-type",
            "canny",
            "--control-strength",
            "0.7",
            "--return-control-map",
        ])
        .unwrap();
        let p = &made.params;
        let loras: Vec<(&str, f64, f64, Option<&str>)> = p
            .loras
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.model,
                    l.clip,
                    l.inject_trigger.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            loras,
            [
                ("58390", 0.5, 1.0, Some("any")),
                ("Detail Tweaker", 1.0, 1.0, Some("any"))
            ]
        );
        assert_eq!(p.tis[0].name, "7808");
        assert_eq!(p.tis[0].inject_ti.as_deref(), Some("negprompt"));
        assert_eq!(p.tis[0].strength, 0.8);
        assert_eq!(p.control_type, Some(ControlType::Canny));
        assert_eq!(p.control_strength, Some(0.7));
        assert!(p.return_control_map && !p.image_is_control);
        for bad in [
            vec!["a cat", "--lora", "x:strong"],
            vec!["a cat", "--lora", "x:1:1:1"],
            vec!["a cat", "--ti", "x:everywhere"],
            vec!["a cat", "--control-type", "canny"],
            vec![
                "a cat",
                "--source-image",
                "in.png",
                "--control-type",
                "lineart",
            ],
        ] {
            assert!(request(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_options_without_a_source_or_of_unknown_kinds_are_refused() {
        assert!(request(&["a cat", "--source-mask", "m.png"]).is_err());
        assert!(request(&["a cat", "--denoising-strength", "0.5"]).is_err());
        assert!(request(&[
            "a cat",
            "--source-image",
            "x.png",
            "--source-processing",
            "remix"
        ])
        .is_err());
        let missing = request(&["a cat", "--source-image", "/no/such/file.png"]).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read /no/such/file.png"),
            "{missing}"
        );
        assert!(request(&[
            "a cat",
            "--hires-fix",
            "--hires-fix-denoising-strength",
            "2"
        ])
        .is_err());
    }
}
