//! Shared keys: created, shown, changed and deleted by their owner; used by anyone holding one
//! to make requests on the owner's account. A key is stored as its salted hash and shown once;
//! afterwards its owner names it by its handle (the hash), which `/sharedkeys/{id}` accepts in
//! place of the key and which never authenticates a request.

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiKey;
use crate::state::AppState;
use horde_api::image::{ImageRequest, RequestWarning};
use horde_api::shared_key::{SharedKeyDetails, SharedKeyInput, SharedKeyPatch};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::shared_key::{max_shared_keys, SharedKey, SharedKeyRefusal};

const DAY_SECS: i64 = 86_400;

impl AppState {
    /// `PUT /sharedkeys`: a new key for `owner`, shown once (its `id` is the key).
    pub async fn create_shared_key(
        &self,
        owner: &User,
        input: SharedKeyInput,
    ) -> ApiResult<SharedKeyDetails> {
        input.validate().map_err(ApiError::validation)?;
        let limit = max_shared_keys(owner.trusted, owner.education);
        if self.store.shared_key_count(owner.id).await? as usize >= limit {
            return Err(ApiError::new(
                Rc::TooManySharedKeys,
                format!("You already have the maximum of {limit} shared keys."),
            ));
        }
        let token = uuid::Uuid::new_v4().to_string();
        let now = now();
        let key = SharedKey {
            id_hash: self.accounts.hash_key(&token),
            owner_id: owner.id,
            name: input.name.unwrap_or_default(),
            kudos: input.kudos as f64,
            expiry: expiry_of(input.expiry, now),
            utilized: 0.0,
            max_image_pixels: input.max_image_pixels,
            max_image_steps: input.max_image_steps,
            max_text_tokens: input.max_text_tokens,
            created: now,
        };
        self.store.insert_shared_key(&key).await?;
        tracing::info!(owner = owner.id, "shared key created");
        Ok(details(&token, &key, owner))
    }

    /// `GET /sharedkeys/{id}` (the key or its handle; `id` answers what was asked with).
    pub async fn shared_key_details(&self, token: &str) -> ApiResult<SharedKeyDetails> {
        let key = self.find_shared_key(token).await?;
        let owner = self.owner_of(&key).await?;
        Ok(details(token, &key, &owner))
    }

    /// `PATCH /sharedkeys/{id}`: only the owner.
    pub async fn modify_shared_key(
        &self,
        caller: &User,
        token: &str,
        patch: SharedKeyPatch,
    ) -> ApiResult<SharedKeyDetails> {
        patch.validate().map_err(ApiError::validation)?;
        if patch.is_empty() {
            return Err(ApiError::new(
                Rc::NoSharedKeyModSelected,
                "No shared key modification selected!",
            ));
        }
        let mut key = self.owned_shared_key(caller, token).await?;
        if let Some(kudos) = patch.kudos {
            key.kudos = kudos as f64;
        }
        if let Some(days) = patch.expiry {
            key.expiry = expiry_of(days, now());
        }
        if let Some(name) = patch.name {
            key.name = name;
        }
        key.max_image_pixels = patch.max_image_pixels.unwrap_or(key.max_image_pixels);
        key.max_image_steps = patch.max_image_steps.unwrap_or(key.max_image_steps);
        key.max_text_tokens = patch.max_text_tokens.unwrap_or(key.max_text_tokens);
        self.store.save_shared_key(&key).await?;
        Ok(details(token, &key, caller))
    }

    /// `DELETE /sharedkeys/{id}`: only the owner.
    pub async fn delete_shared_key(&self, caller: &User, token: &str) -> ApiResult<()> {
        let key = self.owned_shared_key(caller, token).await?;
        self.store.delete_shared_key(&key.id_hash).await?;
        Ok(())
    }

    /// The account a request is made on: a user's key, or a shared key (then also the key).
    /// The user is read through the user cache, at most `max_age_ms` ago.
    pub async fn authenticate_requester(
        &self,
        key: &ApiKey,
        max_age_ms: u64,
    ) -> ApiResult<(User, Option<SharedKey>)> {
        match self.cached_user(key, max_age_ms).await {
            Ok(user) => Ok((user, None)),
            Err(unknown) => {
                let Some(token) = key.0.as_deref() else {
                    return Err(unknown);
                };
                let hash = self.accounts.hash_key(token);
                let Some(shared) = self.store.shared_key(&hash).await? else {
                    return Err(unknown);
                };
                let owner = self.owner_of(&shared).await?;
                Ok((owner, Some(shared)))
            }
        }
    }

    /// A request on a shared key with no kudos left that allows a downgrade is made as the
    /// anonymous user instead (lowest priority), as on the public horde; the warning says so.
    pub async fn downgrade_empty_shared_key(
        &self,
        user: User,
        shared_key: Option<SharedKey>,
        body: &ImageRequest,
    ) -> ApiResult<(User, Option<SharedKey>, Option<RequestWarning>)> {
        let empty = shared_key.as_ref().is_some_and(|k| k.kudos == 0.0);
        if !(empty && body.allow_downgrade) {
            return Ok((user, shared_key, None));
        }
        let anonymous = self
            .authenticate(&ApiKey(Some(horde_api::ANONYMOUS_API_KEY.into())))
            .await?;
        let warning = RequestWarning {
            code: "SharedKeyEmpty".into(),
            message: "This shared key has no kudos left; the request was made anonymously, at the lowest priority, as it allows a downgrade.".into(),
        };
        Ok((anonymous, None, Some(warning)))
    }

    /// The key a path names: the key itself, or its handle (what `sharedkey_ids` lists).
    async fn find_shared_key(&self, token: &str) -> ApiResult<SharedKey> {
        let hash = if is_handle(token) {
            token.to_string()
        } else {
            self.accounts.hash_key(token)
        };
        self.store
            .shared_key(&hash)
            .await?
            .ok_or_else(|| ApiError::new(Rc::SharedKeyInvalid, "No shared key with this id."))
    }

    /// The handles of `owner`'s shared keys (`GET /users/{id}`'s `sharedkey_ids` for the owner
    /// and moderators): the keys' stored hashes, which name a key in `/sharedkeys/{id}` but
    /// never authenticate a request (a request's key is hashed before it is looked up).
    pub async fn shared_key_handles(&self, owner: &User) -> ApiResult<Vec<String>> {
        let limit = max_shared_keys(true, true);
        let keys = self.store.shared_keys_of(owner.id, limit).await?;
        Ok(keys.into_iter().map(|k| k.id_hash).collect())
    }

    async fn owned_shared_key(&self, caller: &User, token: &str) -> ApiResult<SharedKey> {
        let key = self.find_shared_key(token).await?;
        if key.owner_id != caller.id {
            return Err(ApiError::new(
                Rc::NotOwner,
                "Only the owner of a shared key can change or delete it.",
            ));
        }
        Ok(key)
    }

    async fn owner_of(&self, key: &SharedKey) -> ApiResult<User> {
        let owner = self
            .store
            .user_by_id(key.owner_id)
            .await?
            .ok_or_else(|| ApiError::internal("shared key without an owner"))?;
        // A deleted account lends nothing (`modes.rs`).
        if owner.deleted_at.is_some() {
            return Err(ApiError::new(
                Rc::DeletedUser,
                "This shared key's account was deleted.",
            ));
        }
        Ok(owner)
    }
}

/// Whether a request may be made with `key`, answered with the public horde's codes.
pub fn check_shared_key_use(
    key: &SharedKey,
    request: &ImageRequest,
    cost: f64,
    now: i64,
) -> ApiResult<()> {
    key.check_use(request, cost, now)
        .map_err(shared_key_refused)
}

/// Refuses a text request of `max_length` tokens a text, costing `cost`, that `key` may not
/// pay for.
pub fn check_shared_key_text_use(
    key: &SharedKey,
    max_length: u32,
    cost: f64,
    now: i64,
) -> ApiResult<()> {
    key.check_text_use(max_length, cost, now)
        .map_err(shared_key_refused)
}

/// The answer to a request a shared key may not pay for.
fn shared_key_refused(refusal: SharedKeyRefusal) -> ApiError {
    match refusal {
        SharedKeyRefusal::Expired => {
            ApiError::new(Rc::SharedKeyExpired, "This shared key has expired.")
        }
        SharedKeyRefusal::Empty => {
            ApiError::new(Rc::SharedKeyEmpty, "This shared key has no kudos left.")
        }
        SharedKeyRefusal::InsufficientKudos { left, cost } => ApiError::new(
            Rc::SharedKeyInsufficientKudos,
            format!("This request costs {cost:.2} kudos but the shared key has {left:.2} left."),
        ),
        SharedKeyRefusal::TooLarge { pixels, max } => ApiError::new(
            Rc::BadRequest,
            format!("This shared key allows images of at most {max} pixels, not {pixels}."),
        ),
        SharedKeyRefusal::TooManySteps { steps, max } => ApiError::new(
            Rc::BadRequest,
            format!("This shared key allows at most {max} steps, not {steps}."),
        ),
        SharedKeyRefusal::TooManyTokens { tokens, max } => ApiError::new(
            Rc::BadRequest,
            format!("This shared key allows texts of at most {max} tokens, not {tokens}."),
        ),
    }
}

/// Whether `id` is a shared key's handle (its stored hash: 64 hex digits) rather than the key
/// (a UUID).
fn is_handle(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn expiry_of(days: i64, now: i64) -> Option<i64> {
    (days >= 0).then(|| now + days * DAY_SECS)
}

fn details(token: &str, key: &SharedKey, owner: &User) -> SharedKeyDetails {
    SharedKeyDetails {
        id: token.to_string(),
        username: owner.alias(),
        name: key.name.clone(),
        kudos: key.kudos.round() as i64,
        expiry: key.expiry.map(rfc3339),
        utilized: key.utilized.round() as i64,
        max_image_pixels: key.max_image_pixels,
        max_image_steps: key.max_image_steps,
        max_text_tokens: key.max_text_tokens,
    }
}

/// Unix seconds as an RFC 3339 UTC time (days to civil date: H. Hinnant's algorithm).
pub(crate) fn rfc3339(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(DAY_SECS), secs.rem_euclid(DAY_SECS));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{is_handle, rfc3339};

    #[test]
    fn handles_are_stored_hashes_and_keys_are_not() {
        assert!(is_handle(&"0a".repeat(32)));
        assert!(!is_handle("5f3c1b52-8f1c-4b7e-9c1f-0a8e2d1f6b3a"));
        assert!(!is_handle(&"0A".repeat(32)));
        assert!(!is_handle(&"0a".repeat(31)));
    }

    #[test]
    fn unix_times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_609_599), "2026-11-25T12:26:39Z");
    }
}
