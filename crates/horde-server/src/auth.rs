//! Who is calling: the `apikey` header turned into a user, as extractors, so a handler names
//! the role it needs in its signature and receives the user (or the refusal is answered):
//!
//! | extractor | who passes | anonymous key | unknown key |
//! |---|---|---|---|
//! | [`Caller`] | any valid key | passes | `InvalidAPIKey` |
//! | [`Registered`] | a registered user | `AnonForbidden` | `InvalidAPIKey` |
//! | [`Moderator`] | a moderator | `NotModerator` | `InvalidAPIKey` |
//! | [`WorkerOwner`] | a registered user, read through the user cache (pops) | `AnonForbiddenWorker` | `InvalidAPIKey` |
//! | [`Submitter`] | a registered user, read afresh (submits) | `AnonForbiddenWorker` | `InvalidAPIKey` |
//! | [`KeyHolder`] | any valid key (`find_user`) | passes | `UserNotFound` |
//! | [`Requester`] | a user's key or a shared key (image requests) | passes | `InvalidAPIKey` |
//! | [`Viewer`] | anyone; who it is, when the key names a registered user (public reads) | nobody | nobody |
//!
//! (The status of each `rc` is the public horde's: `Rc::status`.)
//!
//! Each extractor that takes a body reads it first and authenticates after, as the public horde
//! validates a request's arguments before it looks at the key: `Registered<HordeJson<T>>`.
//! Without a body the type parameter is left at [`NoBody`]. Ownership (a worker's, a shared
//! key's, a user's own settings) is decided by the service method with the user it is given,
//! by the rules of `horde_core::user_rules`.

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiKey;
use crate::state::{AppState, SharedState};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::shared_key::SharedKey;
use std::future::Future;
use std::marker::PhantomData;

/// How long a pop may use a cached user: pops use roles, not kudos, and every worker pops
/// every second or two.
const WORKER_OWNER_CACHE_MS: u64 = 10_000;
/// How long an image request may use a cached user: accepting a request decides on kudos only
/// for upfront kudos, which reads them afresh.
const REQUESTER_CACHE_MS: u64 = 1_000;

/// The body of a request that has none: the default body of the extractors here.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBody;

impl FromRequest<SharedState> for NoBody {
    type Rejection = ApiError;

    async fn from_request(_: Request, _: &SharedState) -> Result<Self, ApiError> {
        Ok(NoBody)
    }
}

/// The `apikey` header of `request`, and its body read as `B` (before the key is looked at).
async fn key_and_body<B>(request: Request, state: &SharedState) -> ApiResult<(ApiKey, B)>
where
    B: FromRequest<SharedState, Rejection = ApiError>,
{
    let (parts, body) = request.into_parts();
    let key = ApiKey::from_parts(&parts);
    let body = B::from_request(Request::from_parts(parts, body), state).await?;
    Ok((key, body))
}

/// A role: how the user of a key is admitted.
pub trait Role {
    fn admit(state: &AppState, key: &ApiKey) -> impl Future<Output = ApiResult<User>> + Send;
}

/// The caller as role `R` admits them, with the request's body `B`, read before the key is.
pub struct Authenticated<R, B = NoBody> {
    pub user: User,
    pub body: B,
    role: PhantomData<R>,
}

impl<R: Role, B> FromRequest<SharedState> for Authenticated<R, B>
where
    B: FromRequest<SharedState, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, ApiError> {
        let (key, body) = key_and_body::<B>(request, state).await?;
        let user = R::admit(state, &key).await?;
        Ok(Authenticated {
            user,
            body,
            role: PhantomData,
        })
    }
}

/// Any valid key, the anonymous one included.
pub struct AnyKey;
/// A registered user.
pub struct RegisteredUser;
/// A moderator.
pub struct ModeratorUser;
/// A worker's owner popping (through the user cache).
pub struct PoppingOwner;
/// A worker's owner submitting (read afresh).
pub struct SubmittingOwner;
/// The holder of a key asking whose it is (`GET /find_user`).
pub struct KeyOwner;

impl Role for AnyKey {
    async fn admit(state: &AppState, key: &ApiKey) -> ApiResult<User> {
        state.authenticate(key).await
    }
}

impl Role for RegisteredUser {
    async fn admit(state: &AppState, key: &ApiKey) -> ApiResult<User> {
        registered(state.authenticate(key).await?, Rc::AnonForbidden)
    }
}

impl Role for ModeratorUser {
    async fn admit(state: &AppState, key: &ApiKey) -> ApiResult<User> {
        let user = registered(state.authenticate(key).await?, Rc::NotModerator)?;
        if !user.moderator {
            return Err(ApiError::new(
                Rc::NotModerator,
                "Only moderators can do this.",
            ));
        }
        Ok(user)
    }
}

impl Role for PoppingOwner {
    async fn admit(state: &AppState, key: &ApiKey) -> ApiResult<User> {
        let user = state.cached_user(key, WORKER_OWNER_CACHE_MS).await?;
        registered(user, Rc::AnonForbiddenWorker)
    }
}

impl Role for KeyOwner {
    /// A key no user has is 404 `UserNotFound` here, as on the public horde (401 elsewhere);
    /// the key is not echoed.
    async fn admit(state: &AppState, key: &ApiKey) -> ApiResult<User> {
        state.authenticate(key).await.map_err(|e| {
            if key.0.is_some() && e.body.rc.as_deref() == Some(Rc::InvalidAPIKey.as_str()) {
                ApiError::new(Rc::UserNotFound, "No user has the API key sent.")
            } else {
                e
            }
        })
    }
}

impl Role for SubmittingOwner {
    async fn admit(state: &AppState, key: &ApiKey) -> ApiResult<User> {
        registered(state.authenticate(key).await?, Rc::AnonForbiddenWorker)
    }
}

/// Any valid key, with the body `B`.
pub type Caller<B = NoBody> = Authenticated<AnyKey, B>;
/// A registered user, with the body `B`.
pub type Registered<B = NoBody> = Authenticated<RegisteredUser, B>;
/// A moderator, with the body `B`.
pub type Moderator<B = NoBody> = Authenticated<ModeratorUser, B>;
/// A worker's owner popping, with the body `B`.
pub type WorkerOwner<B = NoBody> = Authenticated<PoppingOwner, B>;
/// A worker's owner submitting, with the body `B`.
pub type Submitter<B = NoBody> = Authenticated<SubmittingOwner, B>;
/// Whoever holds the key, asking whose it is.
pub type KeyHolder<B = NoBody> = Authenticated<KeyOwner, B>;

/// `user`, unless it is the anonymous user: then the public horde's refusal `anon_rc`.
pub fn registered(user: User, anon_rc: Rc) -> ApiResult<User> {
    if user.is_anonymous() {
        return Err(ApiError::new(
            anon_rc,
            "Anonymous users cannot do this. Please register an account.",
        ));
    }
    Ok(user)
}

/// The account an image request is made on: a user's key, or a shared key (then the key too,
/// and its owner as the user), with the body `B`.
pub struct Requester<B = NoBody> {
    pub user: User,
    pub shared_key: Option<SharedKey>,
    pub body: B,
}

impl<B> FromRequest<SharedState> for Requester<B>
where
    B: FromRequest<SharedState, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, ApiError> {
        let (key, body) = key_and_body::<B>(request, state).await?;
        let (user, shared_key) = state
            .authenticate_requester(&key, REQUESTER_CACHE_MS)
            .await?;
        Ok(Requester {
            user,
            shared_key,
            body,
        })
    }
}

/// Who reads public details (users, workers): the user of the `apikey` header when it names a
/// registered one (through the user cache); an unknown or missing key sees what everybody
/// sees. Never refuses.
#[derive(Debug, Clone, Default)]
pub struct Viewer(pub Option<User>);

impl FromRequestParts<SharedState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let key = ApiKey::from_parts(parts);
        if key.0.is_none() {
            return Ok(Viewer(None));
        }
        let user = state.cached_user(&key, WORKER_OWNER_CACHE_MS).await.ok();
        Ok(Viewer(user.filter(|u| !u.is_anonymous())))
    }
}
