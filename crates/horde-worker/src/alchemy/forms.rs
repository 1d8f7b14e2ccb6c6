//! The forms an alchemist runs, each on the network configured for it: `nsfw` on the Stable
//! Diffusion safety checker, `interrogation` on CLIP against the horde's term lists, `caption`
//! on BLIP, and every post-processor named in `alchemy_forms` on its own checkpoint.
//!
//! Loading follows the post-processors' rule: a network that does not load is reported with its
//! file and its form left out, so the alchemist declares only what it can finish. Running a form
//! is CPU (or GPU) work and is called from a blocking thread; its answer is either the result
//! object the horde stores as sent, or an image, which the loop uploads before submitting `"R2"`.

use crate::config::WorkerConfig;
use crate::job::Unrunnable;
use crate::postprocess::PostProcessors;
use candle_core::Device;
use horde_alchemy::caption::{caption_result, CaptionSettings, Captioner, HORDE_IMAGE_SIZE};
use horde_alchemy::clip::Clip;
use horde_alchemy::interrogate::{Interrogator, TermLists};
use horde_alchemy::safety::SafetyChecker;
use horde_api::interrogation::makes_image;
use image::{DynamicImage, RgbImage};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A form's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum FormOutput {
    /// The result object, submitted as it is (`{"nsfw": …}`, `{"interrogation": …}`, …).
    Result(Value),
    /// A post-processor's image, to be uploaded as WebP before `{"<form>": "R2"}` is submitted.
    Image(DynamicImage),
}

/// A form whose network did not load, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FormFailure {
    pub form: String,
    pub path: Option<PathBuf>,
    pub reason: String,
}

/// The loaded networks, by form.
#[derive(Default)]
pub struct AlchemyForms {
    safety: Option<Arc<SafetyChecker>>,
    interrogator: Option<Interrogator>,
    captioner: Option<Captioner>,
    post: PostProcessors,
}

impl AlchemyForms {
    /// The `nsfw` form on `checker` (shared with the image worker's censor).
    pub fn with_safety_checker(mut self, checker: Arc<SafetyChecker>) -> Self {
        self.safety = Some(checker);
        self
    }

    /// The `interrogation` form on `clip` over the horde's term lists.
    pub fn with_clip(mut self, clip: Clip) -> Self {
        self.interrogator = Some(Interrogator::new(clip, TermLists::horde()));
        self
    }

    /// The `caption` form on `captioner`.
    pub fn with_captioner(mut self, captioner: Captioner) -> Self {
        self.captioner = Some(captioner);
        self
    }

    /// Post-processors run as forms of their own names.
    pub fn with_post_processors(mut self, post: PostProcessors) -> Self {
        self.post = post;
        self
    }

    /// Loads the networks of the forms `config.alchemy_forms` names on `device`, the safety
    /// checker given when the caller loaded it already (for the censor). A form whose network is
    /// missing or does not load is reported and left out.
    pub fn load(
        config: &WorkerConfig,
        safety: Option<Arc<SafetyChecker>>,
        device: &Device,
    ) -> (Self, Vec<FormFailure>) {
        let mut forms = AlchemyForms::default();
        let mut failures = Vec::new();
        let wanted = |form: &str| config.alchemy_forms.iter().any(|f| f == form);
        if wanted("nsfw") {
            match safety {
                Some(checker) => forms.safety = Some(checker),
                None => failures.push(failure(
                    "nsfw",
                    config.safety_checker.as_deref(),
                    "the safety checker is not configured or did not load".into(),
                )),
            }
        }
        if wanted("interrogation") {
            let clip = config.clip.as_deref();
            match load_dir("clip", clip, |d| Clip::load(d, device)) {
                Ok(clip) => forms = forms.with_clip(clip),
                Err(reason) => failures.push(failure("interrogation", clip, reason)),
            }
        }
        if wanted("caption") {
            let load = |d: &Path| Captioner::load_at(d, device, Some(HORDE_IMAGE_SIZE));
            let blip = config.blip.as_deref();
            match load_dir("blip", blip, load) {
                Ok(captioner) => forms.captioner = Some(captioner),
                Err(reason) => failures.push(failure("caption", blip, reason)),
            }
        }
        let (post, post_failures) = load_post_processors(config, device);
        forms.post = post;
        failures.extend(post_failures);
        (forms, failures)
    }

    /// The forms this alchemist runs, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.post.names();
        for (form, loaded) in [
            ("caption", self.captioner.is_some()),
            ("interrogation", self.interrogator.is_some()),
            ("nsfw", self.safety.is_some()),
        ] {
            if loaded {
                names.push(form.to_string());
            }
        }
        names.sort();
        names
    }

    /// Runs `form` on `image` with the request's `payload`; `seed` seeds a caption's sampler.
    pub fn run(
        &self,
        form: &str,
        payload: Option<&Value>,
        image: &RgbImage,
        seed: u64,
    ) -> Result<FormOutput, Unrunnable> {
        let not_here = || Unrunnable(format!("form {form} is not run on this alchemist"));
        let result = match form {
            "nsfw" => {
                let checker = self.safety.as_ref().ok_or_else(not_here)?;
                let verdict = checker.check(image).map_err(|e| failed(form, e))?;
                json!({ "nsfw": verdict.nsfw })
            }
            "interrogation" => {
                let interrogator = self.interrogator.as_ref().ok_or_else(not_here)?;
                interrogator
                    .interrogate(image)
                    .map_err(|e| failed(form, e))?
            }
            "caption" => {
                let captioner = self.captioner.as_ref().ok_or_else(not_here)?;
                let settings = CaptionSettings::horde(payload.unwrap_or(&Value::Null), seed)
                    .map_err(|e| failed(form, e))?;
                let caption = captioner
                    .caption(image, &settings)
                    .map_err(|e| failed(form, e))?;
                caption_result(&caption)
            }
            _ if makes_image(form) => {
                let chain = [form.to_string()];
                let out = self.post.apply(&chain, image.clone(), None)?;
                return Ok(FormOutput::Image(out));
            }
            _ => return Err(not_here()),
        };
        Ok(FormOutput::Result(result))
    }
}

fn failed(form: &str, error: impl std::fmt::Display) -> Unrunnable {
    Unrunnable(format!("{form}: {error}"))
}

fn missing(key: &str) -> String {
    format!("no `{key}` folder is configured")
}

fn failure(form: &str, path: Option<&Path>, reason: String) -> FormFailure {
    FormFailure {
        form: form.into(),
        path: path.map(Path::to_path_buf),
        reason,
    }
}

/// Loads the safety checker of `config.safety_checker`, when one is configured: the `nsfw`
/// form's and the censor's network. An error names the folder.
pub fn load_safety_checker(
    config: &WorkerConfig,
    device: &Device,
) -> Option<Result<Arc<SafetyChecker>, String>> {
    let dir = config.safety_checker.as_deref()?;
    Some(
        load_dir("safety_checker", Some(dir), |d| {
            SafetyChecker::load(d, device)
        })
        .map(Arc::new),
    )
}

/// Loads the network in the folder configured under `key`.
fn load_dir<T, E: std::fmt::Display>(
    key: &str,
    dir: Option<&Path>,
    load: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, String> {
    let dir = dir.ok_or_else(|| missing(key))?;
    load(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The post-processors named in `alchemy_forms`, from their `post_processors` checkpoints.
fn load_post_processors(
    config: &WorkerConfig,
    device: &Device,
) -> (PostProcessors, Vec<FormFailure>) {
    let mut checkpoints = BTreeMap::new();
    let mut failures = Vec::new();
    for form in config.alchemy_forms.iter().filter(|f| makes_image(f)) {
        match config.post_processors.get(form) {
            Some(path) => {
                checkpoints.insert(form.clone(), path.clone());
            }
            None => failures.push(failure(
                form,
                None,
                format!("no checkpoint for {form} in `post_processors`"),
            )),
        }
    }
    let (post, post_failures) =
        PostProcessors::load(&checkpoints, config.face_detector.as_deref(), device);
    failures.extend(
        post_failures
            .into_iter()
            .map(|f| failure(&f.name, Some(&f.path), f.reason)),
    );
    (post, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../horde-alchemy/tests/fixtures")
    }

    fn config(forms: &[&str]) -> WorkerConfig {
        WorkerConfig {
            api_key: "key".into(),
            name: "w".into(),
            alchemy_forms: forms.iter().map(|f| f.to_string()).collect(),
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn each_form_needs_its_network_and_unknown_forms_are_refused() {
        let refused = |c: &WorkerConfig| c.validate().unwrap_err();
        assert!(refused(&config(&["nsfw"])).contains("nsfw needs safety_checker"));
        assert!(refused(&config(&["interrogation"])).contains("interrogation needs clip"));
        assert!(refused(&config(&["caption"])).contains("caption needs blip"));
        let upscaler = refused(&config(&["RealESRGAN_x2plus"]));
        assert!(
            upscaler.contains("a checkpoint in post_processors"),
            "{upscaler}"
        );
        assert!(refused(&config(&["telepathy"])).contains("telepathy is not a form"));
        let mut tiles = config(&["nsfw"]);
        tiles.safety_checker = Some("/m/safety".into());
        assert_eq!(
            tiles.validate(),
            Ok(()),
            "an alchemist alone serves something"
        );
        tiles.max_tiles = 0;
        assert!(refused(&tiles).contains("max_tiles 0"));
        assert_eq!(tiles.effective_alchemy_name(), "w-alchemy");
    }

    #[test]
    fn a_network_that_does_not_load_leaves_its_form_out_naming_the_folder() {
        let mut c = config(&["nsfw", "interrogation", "RealESRGAN_x2plus"]);
        // A missing folder is named; the nsfw form without a loaded checker is left out.
        c.clip = Some(fixtures().join("missing"));
        let (forms, failures) = AlchemyForms::load(&c, None, &Device::Cpu);
        assert!(forms.names().is_empty());
        let reason = |form: &str| {
            failures
                .iter()
                .find(|f| f.form == form)
                .map(|f| f.reason.clone())
                .unwrap_or_default()
        };
        assert!(reason("nsfw").contains("not configured or did not load"));
        assert!(
            reason("interrogation").contains("missing"),
            "{}",
            reason("interrogation")
        );
        assert!(reason("RealESRGAN_x2plus").contains("no checkpoint for RealESRGAN_x2plus"));
    }

    #[test]
    fn the_nsfw_form_gives_the_checkers_verdict_and_a_missing_form_faults() {
        let c = WorkerConfig {
            safety_checker: Some(fixtures().join("safety")),
            ..config(&["nsfw"])
        };
        let checker = load_safety_checker(&c, &Device::Cpu).unwrap().unwrap();
        let (forms, failures) = AlchemyForms::load(&c, Some(checker), &Device::Cpu);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(forms.names(), ["nsfw"]);
        // The fixtures' verdicts: the flower is flagged, the lake is not.
        for (name, nsfw) in [("flower", true), ("lake", false)] {
            let image = image::open(fixtures().join(format!("safety/{name}.png")))
                .unwrap()
                .to_rgb8();
            let output = forms.run("nsfw", None, &image, 0).unwrap();
            assert_eq!(
                output,
                FormOutput::Result(json!({ "nsfw": nsfw })),
                "{name}"
            );
        }
        let image = RgbImage::new(8, 8);
        let error = forms.run("caption", None, &image, 0).unwrap_err();
        assert!(error.0.contains("form caption is not run"), "{error}");
    }
}
