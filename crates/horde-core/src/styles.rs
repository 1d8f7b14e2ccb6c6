//! Styles and collections: who may make them, what a template must hold, how a name is read,
//! and how a request naming a style is expanded (the public horde's rule, horde-api.md §4.2
//! point 2). Pure: the server looks the style up and passes it in with the request.
//!
//! Expansion: the template's `{p}` becomes the request's prompt and `{np}` its negative prompt
//! (the part after `###`, prefixed again with `###` unless the template already has one);
//! the style's params replace the request's, except `n`, and width and height when the style
//! sets none; the style's models replace the request's. Every field of the request the style
//! changed is named in one warning, so a client learns its own values were not used. The
//! owner of a style is paid [`STYLE_FEE`] by everyone else who uses it.

use crate::Refusal;
use horde_api::image::{ImageRequest, RequestWarning};
use horde_api::text::TextRequest;
use horde_api::Rc;
use serde_json::{Map, Value};
use uuid::Uuid;

/// What a requester pays the owner of a style they do not own, per request.
pub const STYLE_FEE: f64 = 2.0;

/// The kind of request a style (or collection) is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StyleKind {
    Image,
    Text,
}

impl StyleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StyleKind::Image => "image",
            StyleKind::Text => "text",
        }
    }

    pub fn parse(text: &str) -> Option<StyleKind> {
        match text {
            "image" => Some(StyleKind::Image),
            "text" => Some(StyleKind::Text),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StyleExample {
    pub id: Uuid,
    pub url: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Style {
    pub id: Uuid,
    pub kind: StyleKind,
    pub owner_id: i64,
    pub name: String,
    pub info: String,
    pub prompt: String,
    /// As the creator wrote them (no defaults filled), without `n`.
    pub params: Map<String, Value>,
    pub public: bool,
    pub nsfw: bool,
    pub tags: Vec<String>,
    pub models: Vec<String>,
    pub use_count: u64,
    pub created: i64,
    pub examples: Vec<StyleExample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    pub id: Uuid,
    pub kind: StyleKind,
    pub owner_id: i64,
    pub name: String,
    pub info: String,
    pub public: bool,
    pub use_count: u64,
    pub created: i64,
    /// Its styles, in the order given.
    pub style_ids: Vec<Uuid>,
}

/// Why a style or collection may not be made, changed or used (each with the public rc).
#[derive(Debug, Clone, PartialEq)]
pub enum StyleRefusal {
    AnonForbidden,
    RequiresCustomizer,
    /// The template lacks `{p}` (or, for an image style, `{np}`).
    PromptMissingVars(StyleKind),
    NotOwner,
    /// A style of the other kind named where this kind was needed.
    Mismatch {
        wanted: StyleKind,
    },
    MixedCollection,
    TooManyExamples,
    ExampleUrlInUse,
    NameTaken(String),
    NotFound(String),
}

impl Refusal for StyleRefusal {
    fn rc(&self) -> Rc {
        match self {
            StyleRefusal::AnonForbidden => Rc::StylesAnonForbidden,
            StyleRefusal::RequiresCustomizer => Rc::StylesRequiresCustomizer,
            StyleRefusal::PromptMissingVars(_) => Rc::StylePromptMissingVars,
            StyleRefusal::NotOwner => Rc::NotOwner,
            StyleRefusal::Mismatch { .. } | StyleRefusal::MixedCollection => Rc::StyleMismatch,
            StyleRefusal::TooManyExamples => Rc::TooManyStyleExamples,
            StyleRefusal::ExampleUrlInUse => Rc::ExampleURLAlreadyInUse,
            StyleRefusal::NameTaken(_) => Rc::BadRequest,
            StyleRefusal::NotFound(_) => Rc::ThingNotFound,
        }
    }

    fn message(&self) -> String {
        match self {
            StyleRefusal::AnonForbidden => "Anonymous users cannot create or change styles.".into(),
            StyleRefusal::RequiresCustomizer => {
                "Only customizers and trusted users can create new styles.".into()
            }
            StyleRefusal::PromptMissingVars(StyleKind::Image) => {
                "An image style's prompt must contain '{p}' and '{np}'.".into()
            }
            StyleRefusal::PromptMissingVars(StyleKind::Text) => {
                "A text style's prompt must contain '{p}'.".into()
            }
            StyleRefusal::NotOwner => {
                "Only the owner of this style or collection (or a moderator) can change it.".into()
            }
            StyleRefusal::Mismatch { wanted } => format!(
                "This request needs a style of its own kind ({}), and the one named is not.",
                wanted.as_str()
            ),
            StyleRefusal::MixedCollection => {
                "Cannot mix image and text styles in the same collection.".into()
            }
            StyleRefusal::TooManyExamples => {
                "You cannot have more than 4 examples for each style.".into()
            }
            StyleRefusal::ExampleUrlInUse => "This url is already used for this style.".into(),
            StyleRefusal::NameTaken(name) => {
                format!("You already have a style or collection named '{name}'.")
            }
            StyleRefusal::NotFound(what) => format!("{what} not found."),
        }
    }
}

/// Who may create a style: a registered user with the customizer or the trusted role (the
/// public horde's rule; a moderator is trusted). Collections need a registered user only.
pub fn check_creator(anonymous: bool, customizer: bool, trusted: bool) -> Result<(), StyleRefusal> {
    if anonymous {
        return Err(StyleRefusal::AnonForbidden);
    }
    if !(customizer || trusted) {
        return Err(StyleRefusal::RequiresCustomizer);
    }
    Ok(())
}

/// An image template needs `{p}` and `{np}`, a text template `{p}`.
pub fn check_prompt(kind: StyleKind, prompt: &str) -> Result<(), StyleRefusal> {
    let needs_np = kind == StyleKind::Image;
    if !prompt.contains("{p}") || (needs_np && !prompt.contains("{np}")) {
        return Err(StyleRefusal::PromptMissingVars(kind));
    }
    Ok(())
}

/// How a style or collection is named in a request or a lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum StyleRef {
    Id(Uuid),
    /// `alias#id::style::name` (or `::collection::`): the owner and the name.
    Owned {
        owner_id: i64,
        name: String,
    },
    /// A bare name: the oldest public one of that name.
    Bare(String),
}

/// Reads `text` as an id, a full name `alias#id::<marker>::name` or a bare name.
pub fn parse_ref(text: &str, marker: &str) -> StyleRef {
    if let Ok(id) = Uuid::parse_str(text) {
        return StyleRef::Id(id);
    }
    let separator = format!("::{marker}::");
    if let Some((alias, name)) = text.split_once(&separator) {
        if let Some(owner_id) = alias.rsplit_once('#').and_then(|(_, id)| id.parse().ok()) {
            return StyleRef::Owned {
                owner_id,
                name: name.to_string(),
            };
        }
    }
    StyleRef::Bare(text.to_string())
}

/// The public full name of a style or collection: `alias#id::<marker>::name`.
pub fn full_name(owner_alias: &str, marker: &str, name: &str) -> String {
    format!("{owner_alias}::{marker}::{name}")
}

/// The fee `requester_id` pays the owner for using `style`: none on their own style.
pub fn style_fee(style: &Style, requester_id: i64) -> f64 {
    if style.owner_id == requester_id {
        0.0
    } else {
        STYLE_FEE
    }
}

/// The index of the member a collection of `len` styles uses this time (uniform).
pub fn pick_member(len: usize, rng: &mut impl rand::Rng) -> Option<usize> {
    (len > 0).then(|| rng.random_range(0..len))
}

/// `template` with `{p}` as `positive` and `{np}` as `negative` (re-prefixed with `###` when
/// the template has no separator of its own and there is a negative prompt).
fn fill_template(template: &str, positive: &str, negative: Option<&str>) -> String {
    let negative = negative.unwrap_or("");
    let np = if template.contains("###") || negative.is_empty() {
        negative.to_string()
    } else {
        format!("###{negative}")
    };
    template.replace("{p}", positive).replace("{np}", &np)
}

/// The warning naming the request's fields a style changed (none when it changed nothing).
fn overrides_warning(style: &Style, fields: Vec<String>) -> Option<RequestWarning> {
    (!fields.is_empty()).then(|| RequestWarning {
        code: "StyleOverrides".into(),
        message: format!(
            "The style '{}' replaced this request's {}.",
            style.name,
            fields.join(", ")
        ),
    })
}

/// The params a request runs with under `style`: the style's, with the request's `n` (and its
/// `width`/`height` when the style has none); and the names of the request's params that
/// changed.
fn merged_params(style: &Style, own: &Value, keep: &[&str]) -> (Value, Vec<String>) {
    let mut merged = Map::new();
    for (key, value) in &style.params {
        merged.insert(key.clone(), value.clone());
    }
    for key in keep {
        if !style.params.contains_key(*key) || *key == "n" {
            if let Some(value) = own.get(*key) {
                merged.insert(key.to_string(), value.clone());
            }
        }
    }
    let changed = own
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, value)| *key != "n" && style.params.get(*key).is_some_and(|v| v != *value))
        .map(|(key, _)| format!("params.{key}"))
        .collect();
    (Value::Object(merged), changed)
}

/// Why a stored style's params no longer make a request (a style stored before a bound
/// changed): the field and reason.
#[derive(Debug, Clone, PartialEq)]
pub struct BadStoredParams(pub String);

impl Refusal for BadStoredParams {
    fn rc(&self) -> Rc {
        Rc::BadRequest
    }
    fn message(&self) -> String {
        format!("This style's params cannot be applied: {}", self.0)
    }
}

/// `request` as `style` makes it, and the warning naming what the style changed.
pub fn expand_image(
    style: &Style,
    mut request: ImageRequest,
) -> Result<(ImageRequest, Option<RequestWarning>), BadStoredParams> {
    let (positive, negative) = request.prompt_parts();
    let prompt = fill_template(&style.prompt, positive, negative);
    let own = serde_json::to_value(&request.params).map_err(|e| BadStoredParams(e.to_string()))?;
    let (merged, mut changed) = merged_params(style, &own, &["n", "width", "height"]);
    request.params = serde_json::from_value(merged).map_err(|e| BadStoredParams(e.to_string()))?;
    if request.models != style.models {
        changed.push("models".into());
    }
    request.models = style.models.clone();
    request.prompt = prompt;
    request.style = None;
    Ok((request, overrides_warning(style, changed)))
}

/// `request` as the text `style` makes it, and the warning naming what the style changed.
pub fn expand_text(
    style: &Style,
    mut request: TextRequest,
) -> Result<(TextRequest, Option<RequestWarning>), BadStoredParams> {
    let prompt = style.prompt.replace("{p}", &request.prompt);
    let own = serde_json::to_value(&request.params).map_err(|e| BadStoredParams(e.to_string()))?;
    let (merged, mut changed) = merged_params(style, &own, &["n"]);
    request.params = serde_json::from_value(merged).map_err(|e| BadStoredParams(e.to_string()))?;
    if request.models != style.models {
        changed.push("models".into());
    }
    request.models = style.models.clone();
    request.prompt = prompt;
    request.style = None;
    Ok((request, overrides_warning(style, changed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn style(kind: StyleKind, prompt: &str, params: Value, models: &[&str]) -> Style {
        Style {
            id: Uuid::nil(),
            kind,
            owner_id: 7,
            name: "noir".into(),
            info: String::new(),
            prompt: prompt.into(),
            params: params.as_object().unwrap().clone(),
            public: true,
            nsfw: false,
            tags: vec![],
            models: models.iter().map(|m| m.to_string()).collect(),
            use_count: 0,
            created: 0,
            examples: vec![],
        }
    }

    #[test]
    fn only_registered_customizers_or_trusted_users_create_styles() {
        assert_eq!(
            check_creator(true, true, true),
            Err(StyleRefusal::AnonForbidden)
        );
        assert_eq!(
            check_creator(false, false, false),
            Err(StyleRefusal::RequiresCustomizer)
        );
        assert_eq!(check_creator(false, true, false), Ok(()));
        assert_eq!(check_creator(false, false, true), Ok(()));
        assert_eq!(
            StyleRefusal::RequiresCustomizer.rc(),
            Rc::StylesRequiresCustomizer
        );
    }

    #[test]
    fn templates_must_hold_their_placeholders() {
        assert!(check_prompt(StyleKind::Image, "{p} art ###{np}").is_ok());
        assert!(check_prompt(StyleKind::Image, "{p} art").is_err());
        assert!(check_prompt(StyleKind::Text, "Story: {p}").is_ok());
        assert!(check_prompt(StyleKind::Text, "Story").is_err());
    }

    #[test]
    fn names_are_read_as_ids_full_names_or_bare_names() {
        let id = Uuid::new_v4();
        assert_eq!(parse_ref(&id.to_string(), "style"), StyleRef::Id(id));
        assert_eq!(
            parse_ref("db0#1::style::my noir", "style"),
            StyleRef::Owned {
                owner_id: 1,
                name: "my noir".into()
            }
        );
        assert_eq!(
            parse_ref("db0#1::style::x", "collection"),
            StyleRef::Bare("db0#1::style::x".into())
        );
        assert_eq!(parse_ref("noir", "style"), StyleRef::Bare("noir".into()));
    }

    #[test]
    fn an_image_request_takes_the_styles_prompt_params_and_models_but_keeps_n() {
        let s = style(
            StyleKind::Image,
            "{p}, film noir###blurry, {np}",
            json!({"steps": 12, "sampler_name": "k_euler", "width": 768}),
            &["Deliberate"],
        );
        let mut request = ImageRequest::new("a detective###colour");
        (
            request.params.n,
            request.params.steps,
            request.params.height,
        ) = (3, Some(40), 640);
        request.models = vec!["stable_diffusion".into()];
        let (out, warning) = expand_image(&s, request).unwrap();
        assert_eq!(out.prompt, "a detective, film noir###blurry, colour");
        assert_eq!((out.params.n, out.params.steps), (3, Some(12)));
        assert_eq!((out.params.width, out.params.height), (768, 640));
        assert_eq!(out.models, ["Deliberate"]);
        let message = warning.unwrap().message;
        for field in [
            "params.steps",
            "params.sampler_name",
            "params.width",
            "models",
        ] {
            assert!(message.contains(field), "{message}");
        }
        assert!(
            !message.contains("params.height") && !message.contains("params.n,"),
            "{message}"
        );
    }

    #[test]
    fn a_negative_prompt_is_prefixed_only_where_the_template_has_no_separator() {
        assert_eq!(fill_template("{p} {np}", "cat", Some("dog")), "cat ###dog");
        assert_eq!(fill_template("{p} {np}", "cat", None), "cat ");
        assert_eq!(fill_template("{p}###{np}", "cat", Some("dog")), "cat###dog");
    }

    #[test]
    fn a_style_that_changes_nothing_warns_of_nothing() {
        let s = style(
            StyleKind::Image,
            "{p}{np}",
            json!({}),
            &["stable_diffusion"],
        );
        let mut request = ImageRequest::new("cat");
        request.models = vec!["stable_diffusion".into()];
        assert_eq!(expand_image(&s, request).unwrap().1, None);
    }

    #[test]
    fn a_text_request_takes_the_template_and_params_but_keeps_n() {
        let s = style(
            StyleKind::Text,
            "### Instruction: {p}\n### Response:",
            json!({"max_length": 120, "n": 5}),
            &["koboldcpp/m"],
        );
        let mut request = TextRequest::new("write a haiku");
        request.params.n = 2;
        let (out, warning) = expand_text(&s, request).unwrap();
        assert_eq!(out.prompt, "### Instruction: write a haiku\n### Response:");
        assert_eq!((out.params.n, out.params.max_length), (2, 120));
        assert_eq!(out.models, ["koboldcpp/m"]);
        assert!(warning.unwrap().message.contains("params.max_length"));
    }

    #[test]
    fn the_owner_pays_no_fee_and_a_collection_picks_every_member() {
        let s = style(StyleKind::Image, "{p}{np}", json!({}), &[]);
        assert_eq!(style_fee(&s, 7), 0.0);
        assert_eq!(style_fee(&s, 8), STYLE_FEE);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = [false; 3];
        for _ in 0..100 {
            seen[pick_member(3, &mut rng).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(pick_member(0, &mut rng), None);
    }
}
