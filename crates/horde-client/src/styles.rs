//! Styles and collections: `/styles/image…`, `/styles/text…`, `/collections…` and
//! `/collection_by_name/…` (issue 29).
//!
//! Image and text styles share their bodies and answers (`StyleInput`, `StylePatch`,
//! `StyleDetails`, `StyleModified`) and differ only in the path, so each pair of methods calls
//! one private helper with the kind's path segment. Names are sent as one encoded path segment:
//! a full name (`alias#id::style::name`) holds a `#`.

use crate::{segment, Client, Result};
use horde_api::operations::SimpleMessage;
use horde_api::styles::{
    CollectionDetails, CollectionInput, CollectionPatch, CollectionQuery, StyleDetails,
    StyleExampleInput, StyleExamplePatch, StyleInput, StyleModified, StylePatch, StyleQuery,
};
use reqwest::Method;

const IMAGE: &str = "image";
const TEXT: &str = "text";

impl Client {
    /// A page of public image styles (`GET /styles/image`): by use or age, a tag or a model.
    pub async fn image_styles(&self, query: &StyleQuery) -> Result<Vec<StyleDetails>> {
        self.styles(IMAGE, query).await
    }

    /// Creates an image style (customizers and trusted users); its prompt holds `{p}` and
    /// `{np}`. The answer carries the new style's id.
    pub async fn create_image_style(&self, style: &StyleInput) -> Result<StyleModified> {
        self.create_style(IMAGE, style).await
    }

    /// One image style by id.
    pub async fn image_style(&self, id: &str) -> Result<StyleDetails> {
        self.style(IMAGE, id).await
    }

    /// Changes an image style (its owner only).
    pub async fn modify_image_style(&self, id: &str, patch: &StylePatch) -> Result<StyleModified> {
        self.modify_style(IMAGE, id, patch).await
    }

    /// Deletes an image style (its owner or a moderator).
    pub async fn delete_image_style(&self, id: &str) -> Result<SimpleMessage> {
        self.delete_style(IMAGE, id).await
    }

    /// An image style by `alias#id::style::name`, or by a bare name (the oldest public one).
    pub async fn image_style_by_name(&self, name: &str) -> Result<StyleDetails> {
        self.style_by_name(IMAGE, name).await
    }

    /// Adds an example image (an `https://` URL) to an image style; at most four.
    pub async fn add_style_example(
        &self,
        style_id: &str,
        example: &StyleExampleInput,
    ) -> Result<StyleModified> {
        let path = format!("/styles/image/{}/example", segment(style_id));
        self.call(Method::POST, &path, Some(example)).await
    }

    /// Changes an example of an image style.
    pub async fn modify_style_example(
        &self,
        style_id: &str,
        example_id: &str,
        patch: &StyleExamplePatch,
    ) -> Result<StyleModified> {
        let path = example_path(style_id, example_id);
        self.call(Method::PATCH, &path, Some(patch)).await
    }

    /// Deletes an example of an image style.
    pub async fn delete_style_example(
        &self,
        style_id: &str,
        example_id: &str,
    ) -> Result<SimpleMessage> {
        let path = example_path(style_id, example_id);
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// A page of public text styles (`GET /styles/text`).
    pub async fn text_styles(&self, query: &StyleQuery) -> Result<Vec<StyleDetails>> {
        self.styles(TEXT, query).await
    }

    /// Creates a text style; its prompt holds `{p}` and its `params` are text params.
    pub async fn create_text_style(&self, style: &StyleInput) -> Result<StyleModified> {
        self.create_style(TEXT, style).await
    }

    /// One text style by id.
    pub async fn text_style(&self, id: &str) -> Result<StyleDetails> {
        self.style(TEXT, id).await
    }

    /// Changes a text style (its owner only).
    pub async fn modify_text_style(&self, id: &str, patch: &StylePatch) -> Result<StyleModified> {
        self.modify_style(TEXT, id, patch).await
    }

    /// Deletes a text style (its owner or a moderator).
    pub async fn delete_text_style(&self, id: &str) -> Result<SimpleMessage> {
        self.delete_style(TEXT, id).await
    }

    /// A text style by `alias#id::style::name`, or by a bare name.
    pub async fn text_style_by_name(&self, name: &str) -> Result<StyleDetails> {
        self.style_by_name(TEXT, name).await
    }

    /// A page of public collections, of one type (`image`, `text`) or all.
    pub async fn collections(&self, query: &CollectionQuery) -> Result<Vec<CollectionDetails>> {
        self.get_with("/collections", query).await
    }

    /// Creates a collection of styles of one type (registered users).
    pub async fn create_collection(&self, collection: &CollectionInput) -> Result<StyleModified> {
        self.call(Method::POST, "/collections", Some(collection))
            .await
    }

    /// One collection by id.
    pub async fn collection(&self, id: &str) -> Result<CollectionDetails> {
        let path = format!("/collections/{}", segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Changes a collection (its owner only).
    pub async fn modify_collection(
        &self,
        id: &str,
        patch: &CollectionPatch,
    ) -> Result<StyleModified> {
        let path = format!("/collections/{}", segment(id));
        self.call(Method::PATCH, &path, Some(patch)).await
    }

    /// Deletes a collection (its owner or a moderator); its styles stay.
    pub async fn delete_collection(&self, id: &str) -> Result<SimpleMessage> {
        let path = format!("/collections/{}", segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// A collection by `alias#id::collection::name`, or by a bare name.
    pub async fn collection_by_name(&self, name: &str) -> Result<CollectionDetails> {
        let path = format!("/collection_by_name/{}", segment(name));
        self.call(Method::GET, &path, None::<&()>).await
    }

    async fn styles(&self, kind: &str, query: &StyleQuery) -> Result<Vec<StyleDetails>> {
        self.get_with(&format!("/styles/{kind}"), query).await
    }

    async fn create_style(&self, kind: &str, style: &StyleInput) -> Result<StyleModified> {
        let path = format!("/styles/{kind}");
        self.call(Method::POST, &path, Some(style)).await
    }

    async fn style(&self, kind: &str, id: &str) -> Result<StyleDetails> {
        let path = format!("/styles/{kind}/{}", segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    async fn modify_style(
        &self,
        kind: &str,
        id: &str,
        patch: &StylePatch,
    ) -> Result<StyleModified> {
        let path = format!("/styles/{kind}/{}", segment(id));
        self.call(Method::PATCH, &path, Some(patch)).await
    }

    async fn delete_style(&self, kind: &str, id: &str) -> Result<SimpleMessage> {
        let path = format!("/styles/{kind}/{}", segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    async fn style_by_name(&self, kind: &str, name: &str) -> Result<StyleDetails> {
        let path = format!("/styles/{kind}_by_name/{}", segment(name));
        self.call(Method::GET, &path, None::<&()>).await
    }
}

fn example_path(style_id: &str, example_id: &str) -> String {
    let (style, example) = (segment(style_id), segment(example_id));
    format!("/styles/image/{style}/example/{example}")
}
