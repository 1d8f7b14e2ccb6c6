//! Styles and collections: `/styles/image…`, `/styles/text…`, `/collections…`.
//!
//! A style is a named prompt template (`{p}` for the request's prompt, `{np}` for its negative
//! prompt in an image style) with the params and models a request naming it runs with. The
//! public horde's field names and bounds (StyleStable, StyleKobold, ResponseModelCollection);
//! `params` is kept as sent (no defaults filled), and checked against the request params'
//! bounds by parsing it as them.

use crate::error::{ErrorBody, FieldErrors};
use crate::image::{
    ImageParams, ImageRequest, RequestWarning, MAX_LORAS, MAX_TIS, POST_PROCESSORS,
};
use crate::text::TextRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// Styles (and collections) a page of a listing holds.
pub const STYLES_PER_PAGE: usize = 25;
/// The most models a style names.
pub const MAX_STYLE_MODELS: usize = 5;
/// The most tags a style has, and the longest tag.
pub const MAX_STYLE_TAGS: usize = 10;
pub const MAX_TAG_CHARS: usize = 25;
/// The longest prompt template.
pub const MAX_STYLE_PROMPT_CHARS: usize = 10_000;
/// The most examples an image style has (`TooManyStyleExamples`).
pub const MAX_STYLE_EXAMPLES: usize = 4;
/// The most styles a collection holds.
pub const MAX_COLLECTION_STYLES: usize = 100;
/// The last page a listing serves.
pub const MAX_PAGE: u32 = 10_000;
/// The longest `params` object, as JSON.
pub const MAX_PARAMS_JSON: usize = 16_384;

fn yes() -> bool {
    true
}

/// The body of `POST /styles/image` and `POST /styles/text` (ModelStyleInputStable/Kobold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleInput {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 10, max_length = 1000)]
    pub info: Option<String>,
    /// The template: `{p}` becomes the request's prompt; an image style also needs `{np}`,
    /// which becomes its negative prompt (`StylePromptMissingVars`).
    #[schema(min_length = 3, max_length = 10000)]
    pub prompt: String,
    /// The params a request naming the style runs with (all but `n`, which stays the
    /// request's), as the request's `params` would be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub params: Option<Map<String, Value>>,
    #[serde(default = "yes")]
    pub public: bool,
    #[serde(default)]
    pub nsfw: bool,
    #[serde(default)]
    #[schema(max_items = 10)]
    pub tags: Vec<String>,
    /// The models a request naming the style runs on (1..5).
    #[schema(min_items = 1, max_items = 5)]
    pub models: Vec<String>,
}

/// The body of `POST /styles/text` as the spec shows it: [`StyleInput`] with text params and
/// a template that needs only `{p}` (the served document writes its schema, `openapi.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextStyleInput(pub StyleInput);

/// `PATCH /styles/text/{id}` as the spec shows it (see [`TextStyleInput`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextStylePatch(pub StylePatch);

/// `PATCH /styles/image/{id}` and `PATCH /styles/text/{id}`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StylePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 10, max_length = 1000)]
    pub info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 3, max_length = 10000)]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub params: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsfw: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 10)]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 5)]
    pub models: Option<Vec<String>>,
}

/// An example image of an image style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleExample {
    pub id: String,
    pub url: String,
    pub primary: bool,
}

/// A style as listed and shown (StyleStable; StyleKobold has no `examples`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleDetails {
    pub id: String,
    pub name: String,
    pub info: String,
    pub prompt: String,
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub public: bool,
    pub nsfw: bool,
    pub tags: Vec<String>,
    pub models: Vec<String>,
    /// The owner's alias `name#id`.
    pub creator: String,
    pub use_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<Vec<StyleExample>>,
}

/// The answer of creating or changing a style, an example or a collection
/// (ResponseModelStylesPost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleModified {
    pub id: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RequestWarning>,
}

/// The body of `POST /styles/image/{id}/example`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleExampleInput {
    /// Where the image is hosted (https only).
    #[schema(min_length = 10, max_length = 1024, pattern = "^https://")]
    pub url: String,
    /// The style's primary example (the first example always is).
    #[serde(default)]
    pub primary: bool,
}

/// `PATCH /styles/image/{id}/example/{example_id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleExamplePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 10, max_length = 1024, pattern = "^https://")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<bool>,
}

/// The body of `POST /collections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CollectionInput {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000)]
    pub info: Option<String>,
    #[serde(default = "yes")]
    pub public: bool,
    /// Style ids or names (`alias#id::style::name`), all of one type.
    #[schema(min_items = 1, max_items = 100)]
    pub styles: Vec<String>,
}

/// `PATCH /collections/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CollectionPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000)]
    pub info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 100)]
    pub styles: Option<Vec<String>>,
}

/// A style as a collection (or a user's details) names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StyleBrief {
    /// `alias#id::style::name`.
    pub name: String,
    pub id: String,
    /// `image` or `text`, in a user's details (a collection's styles are all of its type).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A collection as listed and shown (ResponseModelCollection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CollectionDetails {
    pub id: String,
    pub name: String,
    pub info: String,
    /// `image` or `text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub public: bool,
    pub creator: String,
    pub use_count: u64,
    pub styles: Vec<StyleBrief>,
}

/// The query of `GET /styles/image` and `GET /styles/text`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StyleQuery {
    /// `popular` (most used first, the default) or `age` (newest first).
    #[param(pattern = "^(popular|age)$")]
    pub sort: Option<String>,
    /// From 1; each page has 25 styles.
    #[param(minimum = 1, maximum = 10000)]
    pub page: Option<u32>,
    /// Only styles with this tag.
    #[param(max_length = 25, pattern = "^[^\\x00]*$")]
    pub tag: Option<String>,
    /// Only styles using this model.
    #[param(max_length = 255, pattern = "^[^\\x00]*$")]
    pub model: Option<String>,
}

/// The query of `GET /collections`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CollectionQuery {
    #[param(pattern = "^(popular|age)$")]
    pub sort: Option<String>,
    #[param(minimum = 1, maximum = 10000)]
    pub page: Option<u32>,
    /// `all` (the default), `image` or `text`.
    #[serde(rename = "type")]
    #[param(pattern = "^(all|image|text)$")]
    pub kind: Option<String>,
}

/// Whether a listing is by use or by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StyleSort {
    Popular,
    Age,
}

fn sort_and_page(
    errors: &mut FieldErrors,
    sort: Option<&str>,
    page: Option<u32>,
) -> (StyleSort, u32) {
    let sort = match sort.unwrap_or("popular") {
        "popular" => StyleSort::Popular,
        "age" => StyleSort::Age,
        _ => {
            errors.add("sort", "needs to be one of ['popular', 'age']");
            StyleSort::Popular
        }
    };
    let page = page.unwrap_or(1);
    errors.range("page", page, 1, MAX_PAGE);
    (sort, page)
}

impl StyleQuery {
    /// The sort and page asked for, or the refusal of a bad one.
    pub fn checked(&self) -> Result<(StyleSort, u32), ErrorBody> {
        let mut errors = FieldErrors::default();
        let out = sort_and_page(&mut errors, self.sort.as_deref(), self.page);
        for (field, text, most) in [
            ("tag", &self.tag, MAX_TAG_CHARS),
            ("model", &self.model, 255),
        ] {
            let Some(text) = text else { continue };
            errors.max_chars(field, text, most);
            // PostgreSQL cannot compare text holding one (a NUL once answered 500 here).
            if text.contains('\0') {
                errors.add(field, "cannot contain NUL bytes");
            }
        }
        errors.into_result().map(|()| out)
    }
}

impl CollectionQuery {
    /// The sort, page and type (none: all) asked for, or the refusal of a bad one.
    pub fn checked(&self) -> Result<(StyleSort, u32, Option<String>), ErrorBody> {
        let mut errors = FieldErrors::default();
        let (sort, page) = sort_and_page(&mut errors, self.sort.as_deref(), self.page);
        let kind = match self.kind.as_deref().unwrap_or("all") {
            "all" => None,
            kind @ ("image" | "text") => Some(kind.to_string()),
            _ => {
                errors.add("type", "needs to be one of ['all', 'image', 'text']");
                None
            }
        };
        errors.into_result().map(|()| (sort, page, kind))
    }
}

/// Whether `params` are image params within the request's bounds.
fn check_image_params(errors: &mut FieldErrors, params: &Map<String, Value>) {
    let body = serde_json::json!({"prompt": "p", "params": params});
    match serde_json::from_value::<ImageRequest>(body) {
        Ok(request) => {
            if let Err(refused) = request.validate() {
                for (field, reason) in refused.errors.unwrap_or_default() {
                    errors.add(&field, reason);
                }
            }
            check_networks(errors, &request.params);
        }
        Err(e) => errors.add("params", format!("not image params: {e}")),
    }
}

/// The bounds the spec states for a request's LoRAs, embeddings, post-processors and control
/// strength, which a request meets through its own rules (`TooManyLoras`,
/// `ControlStrengthOutOfRange`, …) and a style's params through these.
fn check_networks(errors: &mut FieldErrors, params: &ImageParams) {
    errors.max_len("params.loras", &params.loras, MAX_LORAS);
    errors.max_len("params.tis", &params.tis, MAX_TIS);
    let most = POST_PROCESSORS.len();
    errors.max_len("params.post_processing", &params.post_processing, most);
    if let Some(strength) = params.control_strength {
        errors.range("params.control_strength", strength, 0.01, 3.0);
    }
}

/// Whether `params` are text params within the request's bounds.
fn check_text_params(errors: &mut FieldErrors, params: &Map<String, Value>) {
    let body = serde_json::json!({"prompt": "p", "params": params});
    match serde_json::from_value::<TextRequest>(body) {
        Ok(request) => request.params.check_bounds(errors),
        Err(e) => errors.add("params", format!("not text params: {e}")),
    }
}

/// The bounds shared by a new style and a change to one.
struct StyleFields<'a> {
    name: Option<&'a str>,
    info: Option<&'a str>,
    prompt: Option<&'a str>,
    params: Option<&'a Map<String, Value>>,
    tags: Option<&'a [String]>,
    models: Option<&'a [String]>,
}

impl StyleFields<'_> {
    fn check(&self, image: bool) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        if let Some(name) = self.name {
            errors.range("name", name.chars().count(), 1, 100);
        }
        if let Some(info) = self.info {
            errors.range("info", info.chars().count(), 10, 1000);
        }
        if let Some(prompt) = self.prompt {
            errors.range("prompt", prompt.chars().count(), 3, MAX_STYLE_PROMPT_CHARS);
        }
        if let Some(tags) = self.tags {
            errors.max_len("tags", tags, MAX_STYLE_TAGS);
            if let Some(i) = tags
                .iter()
                .position(|t| !(1..=MAX_TAG_CHARS).contains(&t.chars().count()))
            {
                errors.add(&format!("tags.{i}"), "tags are 1..25 characters");
            }
        }
        if let Some(models) = self.models {
            errors.range("models", models.len(), 1, MAX_STYLE_MODELS);
            if let Some(i) = models
                .iter()
                .position(|m| !(1..=255).contains(&m.chars().count()))
            {
                errors.add(&format!("models.{i}"), "model names are 1..255 characters");
            }
        }
        if let Some(params) = self.params {
            if serde_json::to_string(params).map_or(0, |s| s.len()) > MAX_PARAMS_JSON {
                errors.add(
                    "params",
                    format!("more than {MAX_PARAMS_JSON} bytes as JSON"),
                );
            } else if image {
                check_image_params(&mut errors, params);
            } else {
                check_text_params(&mut errors, params);
            }
        }
        errors.into_result()
    }
}

impl StyleInput {
    /// The bounds of the public schema; `image` for an image style's params.
    pub fn validate(&self, image: bool) -> Result<(), ErrorBody> {
        StyleFields {
            name: Some(&self.name),
            info: self.info.as_deref(),
            prompt: Some(&self.prompt),
            params: self.params.as_ref(),
            tags: Some(&self.tags),
            models: Some(&self.models),
        }
        .check(image)
    }
}

impl StylePatch {
    pub fn validate(&self, image: bool) -> Result<(), ErrorBody> {
        StyleFields {
            name: self.name.as_deref(),
            info: self.info.as_deref(),
            prompt: self.prompt.as_deref(),
            params: self.params.as_ref(),
            tags: self.tags.as_deref(),
            models: self.models.as_deref(),
        }
        .check(image)
    }
}

fn check_url(errors: &mut FieldErrors, url: &str) {
    errors.range("url", url.chars().count(), 10, 1024);
    if !url.starts_with("https://") {
        errors.add("url", "The url has to start with 'https://'");
    }
}

impl StyleExampleInput {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check_url(&mut errors, &self.url);
        errors.into_result()
    }
}

impl StyleExamplePatch {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        if let Some(url) = &self.url {
            check_url(&mut errors, url);
        }
        errors.into_result()
    }
}

fn check_collection(
    errors: &mut FieldErrors,
    name: Option<&str>,
    info: Option<&str>,
    styles: Option<&[String]>,
) {
    if let Some(name) = name {
        errors.range("name", name.chars().count(), 1, 100);
    }
    if let Some(info) = info {
        errors.range("info", info.chars().count(), 1, 1000);
    }
    if let Some(styles) = styles {
        errors.range("styles", styles.len(), 1, MAX_COLLECTION_STYLES);
        if let Some(i) = styles.iter().position(|s| s.chars().count() > 1024) {
            errors.add(&format!("styles.{i}"), "more than 1024 characters");
        }
    }
}

impl CollectionInput {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check_collection(
            &mut errors,
            Some(&self.name),
            self.info.as_deref(),
            Some(&self.styles),
        );
        errors.into_result()
    }
}

impl CollectionPatch {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check_collection(
            &mut errors,
            self.name.as_deref(),
            self.info.as_deref(),
            self.styles.as_deref(),
        );
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(body: Value) -> StyleInput {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_style_is_held_to_the_public_bounds_and_its_params_to_the_requests() {
        let good = json!({"name": "noir", "prompt": "{p}, noir###{np}", "models": ["stable_diffusion"],
                          "params": {"steps": 20, "sampler_name": "k_euler"}});
        assert_eq!(input(good.clone()).validate(true), Ok(()));
        let refused = |edit: Value| {
            let mut body = good.clone();
            body.as_object_mut()
                .unwrap()
                .extend(edit.as_object().unwrap().clone());
            let errors = input(body).validate(true).unwrap_err().errors.unwrap();
            errors.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(refused(json!({"name": ""})), ["name"]);
        assert_eq!(refused(json!({"info": "short"})), ["info"]);
        assert_eq!(refused(json!({"models": []})), ["models"]);
        assert_eq!(
            refused(json!({"models": ["a", "b", "c", "d", "e", "f"]})),
            ["models"]
        );
        assert_eq!(refused(json!({"tags": ["x".repeat(26)]})), ["tags.0"]);
        assert_eq!(refused(json!({"params": {"steps": 501}})), ["params.steps"]);
        assert_eq!(refused(json!({"params": {"steps": "many"}})), ["params"]);
        let six_loras = vec![json!({"name": "a"}); 6];
        assert_eq!(
            refused(json!({"params": {"loras": six_loras}})),
            ["params.loras"]
        );
        // Text params are text's: `max_length` is bounded there, unknown to image params.
        let text = input(json!({"name": "t", "prompt": "{p}", "models": ["m"],
                               "params": {"max_length": 8}}));
        assert!(text.validate(false).is_err());
        assert_eq!(text.validate(true), Ok(()));
    }

    #[test]
    fn listings_take_a_known_sort_and_a_page_from_one() {
        let query = |sort: Option<&str>, page| StyleQuery {
            sort: sort.map(String::from),
            page,
            ..Default::default()
        };
        assert_eq!(query(None, None).checked(), Ok((StyleSort::Popular, 1)));
        assert_eq!(
            query(Some("age"), Some(3)).checked(),
            Ok((StyleSort::Age, 3))
        );
        assert!(query(Some("newest"), None).checked().is_err());
        assert!(query(None, Some(0)).checked().is_err());
        let collections = CollectionQuery {
            kind: Some("text".into()),
            ..Default::default()
        };
        assert_eq!(collections.checked().unwrap().2.as_deref(), Some("text"));
        let bad = CollectionQuery {
            kind: Some("video".into()),
            ..Default::default()
        };
        assert!(bad.checked().is_err());
    }

    #[test]
    fn examples_are_https_urls() {
        let example = |url: &str| StyleExampleInput {
            url: url.into(),
            primary: false,
        };
        assert_eq!(example("https://example.com/a.webp").validate(), Ok(()));
        assert!(example("http://example.com/a.webp").validate().is_err());
    }
}
