//! Styles and collections: made by customizers and trusted users, shown to everyone, changed
//! by their owner (deleted also by a moderator), and applied to the image and text requests
//! that name them (`horde_core::styles` has the rules; the fee is paid once the request is
//! accepted).

use crate::auth::registered;
use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::state::AppState;
use horde_api::image::{ImageRequest, RequestWarning};
use horde_api::styles::{
    CollectionDetails, CollectionInput, CollectionPatch, CollectionQuery, StyleBrief, StyleDetails,
    StyleExampleInput, StyleExamplePatch, StyleInput, StyleModified, StylePatch, StyleQuery,
    StyleSort, MAX_STYLE_EXAMPLES, STYLES_PER_PAGE,
};
use horde_api::text::TextRequest;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::styles::{
    self as rules, check_creator, check_prompt, Collection, Style, StyleExample, StyleKind,
    StyleRef, StyleRefusal,
};
use horde_store::styles::{StyleListing, StyleUse};
use serde_json::{Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// A style a request was expanded with: what its acceptance must pay and count.
pub(crate) struct AppliedStyle {
    style_id: Uuid,
    collection_id: Option<Uuid>,
    owner_id: i64,
    fee: f64,
    warning: Option<RequestWarning>,
}

impl AppliedStyle {
    /// What the requester pays the style's owner (0 for one's own style).
    pub(crate) fn fee(&self) -> f64 {
        self.fee
    }
}

fn not_found(what: &str, id: &str) -> ApiError {
    refused(StyleRefusal::NotFound(format!("{what} '{id}'")))
}

/// A style of the other kind asked for by id or name: 404, as no style of this kind has it
/// (the public horde answers 400 `StyleGetMistmatch`; here a request the spec allows is
/// answered 404 when what it names is missing, never 400).
fn other_kind(kind: StyleKind, id: &str) -> ApiError {
    refused(StyleRefusal::NotFound(format!(
        "{} style '{id}' (it is a style of the other kind)",
        kind.as_str()
    )))
}

/// The message of every successful change.
fn modified(id: Uuid) -> StyleModified {
    StyleModified {
        id: id.to_string(),
        message: "OK".into(),
        warnings: vec![],
    }
}

/// `params` as stored: `n` is always the request's own.
fn stored_params(params: Option<Map<String, Value>>) -> Map<String, Value> {
    let mut params = params.unwrap_or_default();
    params.remove("n");
    params
}

impl AppState {
    /// `POST /styles/image` and `/styles/text`.
    pub async fn create_style(
        &self,
        caller: &User,
        kind: StyleKind,
        input: StyleInput,
    ) -> ApiResult<StyleModified> {
        let trusted = caller.trusted || caller.moderator;
        check_creator(caller.is_anonymous(), caller.customizer, trusted).map_err(refused)?;
        input
            .validate(kind == StyleKind::Image)
            .map_err(ApiError::validation)?;
        check_prompt(kind, &input.prompt).map_err(refused)?;
        self.check_style_name(caller.id, &input.name, None).await?;
        let style = Style {
            // Time-ordered: listings by age break ties within a second by id.
            id: Uuid::now_v7(),
            kind,
            owner_id: caller.id,
            name: input.name,
            info: input.info.unwrap_or_default(),
            prompt: input.prompt,
            params: stored_params(input.params),
            public: input.public,
            nsfw: input.nsfw,
            tags: dedup(input.tags),
            models: dedup(input.models),
            use_count: 0,
            created: now(),
            examples: vec![],
        };
        self.store.insert_style(&style).await?;
        Ok(modified(style.id))
    }

    /// `GET /styles/<kind>/{id}`.
    pub async fn style_details(&self, kind: StyleKind, id: &str) -> ApiResult<StyleDetails> {
        let style = self.style_of_kind(kind, id).await?;
        self.details_of(vec![style]).await.map(|mut d| d.remove(0))
    }

    /// `GET /styles/<kind>_by_name/{name}`.
    pub async fn style_details_by_name(
        &self,
        kind: StyleKind,
        name: &str,
    ) -> ApiResult<StyleDetails> {
        let style = self
            .find_style(name)
            .await?
            .ok_or_else(|| not_found("Style", name))?;
        if style.kind != kind {
            return Err(other_kind(kind, name));
        }
        self.details_of(vec![style]).await.map(|mut d| d.remove(0))
    }

    /// `GET /styles/<kind>`: a page of public styles.
    pub async fn list_styles(
        &self,
        kind: StyleKind,
        query: &StyleQuery,
    ) -> ApiResult<Vec<StyleDetails>> {
        let (sort, page) = query.checked().map_err(ApiError::validation)?;
        let listing = StyleListing {
            kind,
            popular: sort == StyleSort::Popular,
            page,
            per_page: STYLES_PER_PAGE as u32,
            tag: query.tag.clone(),
            model: query.model.clone(),
        };
        let styles = self.store.list_styles(&listing).await?;
        self.details_of(styles).await
    }

    /// `PATCH /styles/<kind>/{id}`: the owner only.
    pub async fn modify_style(
        &self,
        caller: &User,
        kind: StyleKind,
        id: &str,
        patch: StylePatch,
    ) -> ApiResult<StyleModified> {
        let caller = registered(caller.clone(), Rc::StylesAnonForbidden)?;
        patch
            .validate(kind == StyleKind::Image)
            .map_err(ApiError::validation)?;
        let mut style = self.style_of_kind(kind, id).await?;
        if style.owner_id != caller.id {
            return Err(refused(StyleRefusal::NotOwner));
        }
        if let Some(prompt) = &patch.prompt {
            check_prompt(kind, prompt).map_err(refused)?;
        }
        if let Some(name) = &patch.name {
            self.check_style_name(caller.id, name, Some(style.id))
                .await?;
        }
        apply_patch(&mut style, patch);
        self.store.save_style(&style).await?;
        Ok(modified(style.id))
    }

    /// `DELETE /styles/<kind>/{id}`: the owner or a moderator.
    pub async fn delete_style(&self, caller: &User, kind: StyleKind, id: &str) -> ApiResult<()> {
        let caller = registered(caller.clone(), Rc::StylesAnonForbidden)?;
        let style = self.style_of_kind(kind, id).await?;
        if style.owner_id != caller.id && !caller.moderator {
            return Err(refused(StyleRefusal::NotOwner));
        }
        if style.owner_id != caller.id {
            tracing::info!(moderator = caller.id, style = %style.id, "moderator deleted a style");
        }
        self.store.delete_style(style.id).await?;
        Ok(())
    }

    /// `POST /styles/image/{id}/example`: the owner or a moderator; at most four, one primary
    /// (the first always is).
    pub async fn add_style_example(
        &self,
        caller: &User,
        id: &str,
        input: StyleExampleInput,
    ) -> ApiResult<StyleModified> {
        input.validate().map_err(ApiError::validation)?;
        let mut style = self.example_owner_style(caller, id).await?;
        if style.examples.len() >= MAX_STYLE_EXAMPLES {
            return Err(refused(StyleRefusal::TooManyExamples));
        }
        if style.examples.iter().any(|e| e.url == input.url) {
            return Err(refused(StyleRefusal::ExampleUrlInUse));
        }
        let example = StyleExample {
            id: Uuid::new_v4(),
            url: input.url,
            primary: input.primary || !style.examples.iter().any(|e| e.primary),
        };
        let example_id = example.id;
        let end = style.examples.len();
        put_example(&mut style.examples, end, example);
        self.store.save_examples(&style, now()).await?;
        Ok(modified(example_id))
    }

    /// `PATCH /styles/image/{id}/example/{example_id}`.
    pub async fn modify_style_example(
        &self,
        caller: &User,
        id: &str,
        example_id: &str,
        patch: StyleExamplePatch,
    ) -> ApiResult<StyleModified> {
        patch.validate().map_err(ApiError::validation)?;
        let mut style = self.example_owner_style(caller, id).await?;
        let index = example_index(&style, example_id)?;
        let mut example = style.examples.remove(index);
        if let Some(url) = patch.url {
            if style.examples.iter().any(|e| e.url == url) {
                return Err(refused(StyleRefusal::ExampleUrlInUse));
            }
            example.url = url;
        }
        if let Some(primary) = patch.primary {
            example.primary = primary || !style.examples.iter().any(|e| e.primary);
        }
        let example_id = example.id;
        put_example(&mut style.examples, index, example);
        self.store.save_examples(&style, now()).await?;
        Ok(modified(example_id))
    }

    /// `DELETE /styles/image/{id}/example/{example_id}`: the next example becomes primary.
    pub async fn delete_style_example(
        &self,
        caller: &User,
        id: &str,
        example_id: &str,
    ) -> ApiResult<()> {
        let mut style = self.example_owner_style(caller, id).await?;
        let index = example_index(&style, example_id)?;
        let removed = style.examples.remove(index);
        if removed.primary {
            if let Some(first) = style.examples.first_mut() {
                first.primary = true;
            }
        }
        self.store.save_examples(&style, now()).await?;
        Ok(())
    }

    /// `POST /collections`: any registered user; the styles all of one kind.
    pub async fn create_collection(
        &self,
        caller: &User,
        input: CollectionInput,
    ) -> ApiResult<StyleModified> {
        let caller = registered(caller.clone(), Rc::StylesAnonForbidden)?;
        input.validate().map_err(ApiError::validation)?;
        let (kind, style_ids) = self.collection_members(&input.styles).await?;
        self.check_collection_name(caller.id, &input.name, None)
            .await?;
        let collection = Collection {
            id: Uuid::now_v7(),
            kind,
            owner_id: caller.id,
            name: input.name,
            info: input.info.unwrap_or_default(),
            public: input.public,
            use_count: 0,
            created: now(),
            style_ids,
        };
        self.store.insert_collection(&collection).await?;
        Ok(modified(collection.id))
    }

    /// `GET /collections/{id}`.
    pub async fn collection_details(&self, id: &str) -> ApiResult<CollectionDetails> {
        let collection = self.find_collection_by_id(id).await?;
        self.collection_view(collection).await
    }

    /// `GET /collection_by_name/{name}`.
    pub async fn collection_details_by_name(&self, name: &str) -> ApiResult<CollectionDetails> {
        let collection = self
            .find_collection(name)
            .await?
            .ok_or_else(|| not_found("Collection", name))?;
        self.collection_view(collection).await
    }

    /// `GET /collections`.
    pub async fn list_collections(
        &self,
        query: &CollectionQuery,
    ) -> ApiResult<Vec<CollectionDetails>> {
        let (sort, page, kind) = query.checked().map_err(ApiError::validation)?;
        let kind = kind.as_deref().and_then(StyleKind::parse);
        let popular = sort == StyleSort::Popular;
        let collections = self
            .store
            .list_collections(kind, popular, page, STYLES_PER_PAGE as u32)
            .await?;
        let mut out = Vec::with_capacity(collections.len());
        for collection in collections {
            out.push(self.collection_view(collection).await?);
        }
        Ok(out)
    }

    /// `PATCH /collections/{id}`: the owner only.
    pub async fn modify_collection(
        &self,
        caller: &User,
        id: &str,
        patch: CollectionPatch,
    ) -> ApiResult<StyleModified> {
        let caller = registered(caller.clone(), Rc::StylesAnonForbidden)?;
        patch.validate().map_err(ApiError::validation)?;
        let mut collection = self.find_collection_by_id(id).await?;
        if collection.owner_id != caller.id {
            return Err(refused(StyleRefusal::NotOwner));
        }
        if let Some(styles) = &patch.styles {
            (collection.kind, collection.style_ids) = self.collection_members(styles).await?;
        }
        if let Some(name) = patch.name {
            self.check_collection_name(caller.id, &name, Some(collection.id))
                .await?;
            collection.name = name;
        }
        collection.info = patch.info.unwrap_or(collection.info);
        collection.public = patch.public.unwrap_or(collection.public);
        self.store.save_collection(&collection).await?;
        Ok(modified(collection.id))
    }

    /// `DELETE /collections/{id}`: the owner or a moderator.
    pub async fn delete_collection(&self, caller: &User, id: &str) -> ApiResult<()> {
        let caller = registered(caller.clone(), Rc::StylesAnonForbidden)?;
        let collection = self.find_collection_by_id(id).await?;
        if collection.owner_id != caller.id && !caller.moderator {
            return Err(refused(StyleRefusal::NotOwner));
        }
        self.store.delete_collection(collection.id).await?;
        Ok(())
    }

    /// An image request naming a style (or a collection) as the style makes it.
    pub(crate) async fn apply_image_style(
        &self,
        user: &User,
        body: ImageRequest,
    ) -> ApiResult<(ImageRequest, Option<AppliedStyle>)> {
        let Some(name) = body.style.clone() else {
            return Ok((body, None));
        };
        body.validate().map_err(ApiError::validation)?;
        let (style, collection_id) = self.style_for_request(&name, StyleKind::Image).await?;
        let (body, warning) = rules::expand_image(&style, body).map_err(refused)?;
        Ok((body, Some(applied(&style, collection_id, user, warning))))
    }

    /// A text request naming a style (or a collection) as the style makes it.
    pub(crate) async fn apply_text_style(
        &self,
        user: &User,
        body: TextRequest,
    ) -> ApiResult<(TextRequest, Option<AppliedStyle>)> {
        let Some(name) = body.style.clone() else {
            return Ok((body, None));
        };
        body.validate().map_err(ApiError::validation)?;
        let (style, collection_id) = self.style_for_request(&name, StyleKind::Text).await?;
        let (body, warning) = rules::expand_text(&style, body).map_err(refused)?;
        Ok((body, Some(applied(&style, collection_id, user, warning))))
    }

    /// Once the request `request_id` of `user` is accepted: counts the style's use and pays
    /// its owner. Answers the warning to add to the 202 (what the style replaced).
    pub(crate) async fn record_style_use(
        &self,
        user: &User,
        style: Option<AppliedStyle>,
        request_id: Uuid,
    ) -> Option<RequestWarning> {
        let style = style?;
        let used = StyleUse {
            style_id: style.style_id,
            collection_id: style.collection_id,
            requester_id: user.id,
            owner_id: style.owner_id,
            fee: style.fee,
            request_id,
            at: now(),
        };
        // The request is already accepted and queued: a failure here is logged, not answered.
        if let Err(e) = self.store.record_style_use(&used).await {
            tracing::error!(error = %e, style = %style.style_id, "style use not recorded");
        }
        style.warning
    }

    /// The style `name` names for a request of `kind`: a style, or a random member of a
    /// collection (then the collection's id too).
    async fn style_for_request(
        &self,
        name: &str,
        kind: StyleKind,
    ) -> ApiResult<(Style, Option<Uuid>)> {
        if let Some(style) = self.find_style(name).await? {
            if style.kind != kind {
                return Err(refused(StyleRefusal::Mismatch { wanted: kind }));
            }
            return Ok((style, None));
        }
        let collection = self
            .find_collection(name)
            .await?
            .ok_or_else(|| not_found("Style", name))?;
        if collection.kind != kind {
            return Err(refused(StyleRefusal::Mismatch { wanted: kind }));
        }
        let pick = rules::pick_member(collection.style_ids.len(), &mut rand::rng())
            .ok_or_else(|| not_found("Style of collection", name))?;
        let style = self
            .store
            .style(collection.style_ids[pick])
            .await?
            .ok_or_else(|| not_found("Style of collection", name))?;
        Ok((style, Some(collection.id)))
    }

    /// A style by id, full name or bare name.
    async fn find_style(&self, text: &str) -> ApiResult<Option<Style>> {
        Ok(match rules::parse_ref(text, "style") {
            StyleRef::Id(id) => self.store.style(id).await?,
            StyleRef::Owned { owner_id, name } => {
                self.store.style_named(Some(owner_id), &name).await?
            }
            StyleRef::Bare(name) => self.store.style_named(None, &name).await?,
        })
    }

    async fn find_collection(&self, text: &str) -> ApiResult<Option<Collection>> {
        Ok(match rules::parse_ref(text, "collection") {
            StyleRef::Id(id) => self.store.collection(id).await?,
            StyleRef::Owned { owner_id, name } => {
                self.store.collection_named(Some(owner_id), &name).await?
            }
            StyleRef::Bare(name) => self.store.collection_named(None, &name).await?,
        })
    }

    async fn find_collection_by_id(&self, id: &str) -> ApiResult<Collection> {
        let found = match Uuid::parse_str(id) {
            Ok(uuid) => self.store.collection(uuid).await?,
            Err(_) => None,
        };
        found.ok_or_else(|| not_found("Collection", id))
    }

    /// The style with id `id`, which must be of `kind` (404 otherwise: [`other_kind`]).
    async fn style_of_kind(&self, kind: StyleKind, id: &str) -> ApiResult<Style> {
        let found = match Uuid::parse_str(id) {
            Ok(uuid) => self.store.style(uuid).await?,
            Err(_) => None,
        };
        let style = found.ok_or_else(|| not_found("Style", id))?;
        if style.kind != kind {
            return Err(other_kind(kind, id));
        }
        Ok(style)
    }

    /// The image style `id` whose examples `caller` (its owner or a moderator) changes.
    async fn example_owner_style(&self, caller: &User, id: &str) -> ApiResult<Style> {
        let caller = registered(caller.clone(), Rc::StylesAnonForbidden)?;
        let style = self.style_of_kind(StyleKind::Image, id).await?;
        if style.owner_id != caller.id && !caller.moderator {
            return Err(refused(StyleRefusal::NotOwner));
        }
        Ok(style)
    }

    /// Refuses a name another of `owner`'s styles has.
    async fn check_style_name(
        &self,
        owner: i64,
        name: &str,
        except: Option<Uuid>,
    ) -> ApiResult<()> {
        match self.store.style_named(Some(owner), name).await? {
            Some(other) if Some(other.id) != except => {
                Err(refused(StyleRefusal::NameTaken(name.to_string())))
            }
            _ => Ok(()),
        }
    }

    async fn check_collection_name(
        &self,
        owner: i64,
        name: &str,
        except: Option<Uuid>,
    ) -> ApiResult<()> {
        match self.store.collection_named(Some(owner), name).await? {
            Some(other) if Some(other.id) != except => {
                Err(refused(StyleRefusal::NameTaken(name.to_string())))
            }
            _ => Ok(()),
        }
    }

    /// The styles a collection names (each must exist: 404), all of one kind.
    async fn collection_members(&self, names: &[String]) -> ApiResult<(StyleKind, Vec<Uuid>)> {
        let mut kind = None;
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            let style = self
                .find_style(name)
                .await?
                .ok_or_else(|| not_found("Style", name))?;
            if kind.is_some_and(|k| k != style.kind) {
                return Err(refused(StyleRefusal::MixedCollection));
            }
            kind = Some(style.kind);
            if !ids.contains(&style.id) {
                ids.push(style.id);
            }
        }
        Ok((kind.unwrap_or(StyleKind::Image), ids))
    }

    /// The aliases of `owners`, read once each.
    async fn aliases(&self, owners: impl Iterator<Item = i64>) -> ApiResult<HashMap<i64, String>> {
        let mut out = HashMap::new();
        for owner in owners {
            if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(owner) {
                let user = self.store.user_by_id(owner).await?;
                slot.insert(user.map_or_else(|| format!("unknown#{owner}"), |u| u.alias()));
            }
        }
        Ok(out)
    }

    async fn details_of(&self, styles: Vec<Style>) -> ApiResult<Vec<StyleDetails>> {
        let aliases = self.aliases(styles.iter().map(|s| s.owner_id)).await?;
        Ok(styles
            .into_iter()
            .map(|s| style_view(s, &aliases))
            .collect())
    }

    async fn collection_view(&self, c: Collection) -> ApiResult<CollectionDetails> {
        let mut members = Vec::with_capacity(c.style_ids.len());
        for id in &c.style_ids {
            members.extend(self.store.style(*id).await?);
        }
        let owners = members.iter().map(|s| s.owner_id).chain([c.owner_id]);
        let aliases = self.aliases(owners).await?;
        Ok(CollectionDetails {
            id: c.id.to_string(),
            name: c.name,
            info: c.info,
            kind: c.kind.as_str().into(),
            public: c.public,
            creator: aliases[&c.owner_id].clone(),
            use_count: c.use_count,
            styles: members
                .iter()
                .map(|s| StyleBrief {
                    name: rules::full_name(&aliases[&s.owner_id], "style", &s.name),
                    id: s.id.to_string(),
                    kind: None,
                })
                .collect(),
        })
    }

    /// `user`'s public styles as their details show them.
    pub async fn styles_brief(&self, user: &User) -> ApiResult<Vec<StyleBrief>> {
        let styles = self.store.styles_of_user(user.id, false).await?;
        Ok(styles
            .into_iter()
            .map(|(id, name, kind)| StyleBrief {
                name: rules::full_name(&user.alias(), "style", &name),
                id: id.to_string(),
                kind: Some(kind.as_str().into()),
            })
            .collect())
    }
}

fn applied(
    style: &Style,
    collection_id: Option<Uuid>,
    user: &User,
    warning: Option<RequestWarning>,
) -> AppliedStyle {
    AppliedStyle {
        style_id: style.id,
        collection_id,
        owner_id: style.owner_id,
        fee: rules::style_fee(style, user.id),
        warning,
    }
}

fn dedup(mut list: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    list.retain(|item| seen.insert(item.clone()));
    list
}

fn apply_patch(style: &mut Style, patch: StylePatch) {
    if let Some(name) = patch.name {
        style.name = name;
    }
    if let Some(info) = patch.info {
        style.info = info;
    }
    if let Some(prompt) = patch.prompt {
        style.prompt = prompt;
    }
    if let Some(params) = patch.params {
        style.params = stored_params(Some(params));
    }
    style.public = patch.public.unwrap_or(style.public);
    style.nsfw = patch.nsfw.unwrap_or(style.nsfw);
    if let Some(tags) = patch.tags {
        style.tags = dedup(tags);
    }
    if let Some(models) = patch.models {
        style.models = dedup(models);
    }
}

/// Puts `example` at `index`; when it is primary, the others are not.
fn put_example(examples: &mut Vec<StyleExample>, index: usize, example: StyleExample) {
    if example.primary {
        for other in examples.iter_mut() {
            other.primary = false;
        }
    }
    examples.insert(index.min(examples.len()), example);
}

fn example_index(style: &Style, example_id: &str) -> ApiResult<usize> {
    style
        .examples
        .iter()
        .position(|e| e.id.to_string() == example_id)
        .ok_or_else(|| not_found("Style example", example_id))
}

fn style_view(s: Style, aliases: &HashMap<i64, String>) -> StyleDetails {
    let examples = (s.kind == StyleKind::Image).then(|| {
        s.examples
            .iter()
            .map(|e| horde_api::styles::StyleExample {
                id: e.id.to_string(),
                url: e.url.clone(),
                primary: e.primary,
            })
            .collect()
    });
    StyleDetails {
        id: s.id.to_string(),
        creator: aliases[&s.owner_id].clone(),
        name: s.name,
        info: s.info,
        prompt: s.prompt,
        params: s.params,
        public: s.public,
        nsfw: s.nsfw,
        tags: s.tags,
        models: s.models,
        use_count: s.use_count,
        examples,
    }
}
