//! Users: who a key belongs to, account creation (CLI and the test-only endpoint), details.

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::extract::ApiKey;
use crate::kinds::ServedKind;
use crate::state::AppState;
use horde_api::user::{
    ActiveGenerations, CountRecord, DailyQuota, KudosTransferRequest, KudosTransferred, ModifyUser,
    ModifyUserResponse, MonthlyKudos, NewApiKey, TestUserRequest, TestUserResponse, UsageRecord,
    UserDetails, UserKudosDetails, UserRecords,
};
use horde_api::Rc;
use horde_core::accounts::{Privilege, User};
use horde_core::keys::generate_api_key;
use horde_core::{quota, user_rules};
use horde_store::NewUser;

/// 404 `UserNotFound` for a user id as the caller wrote it.
fn user_not_found(id: &str) -> ApiError {
    ApiError::new(Rc::UserNotFound, format!("User with ID '{id}' not found."))
}

/// A user id from a path, or 404 `UserNotFound` when it is not a number.
fn parse_user_id(id: &str) -> ApiResult<i64> {
    id.parse().map_err(|_| user_not_found(id))
}

/// A new account and its key, which is shown once and never stored.
pub struct CreatedUser {
    pub user: User,
    pub api_key: String,
}

impl AppState {
    /// The user of the `apikey` header: 401 when missing or unknown.
    pub async fn authenticate(&self, key: &ApiKey) -> ApiResult<User> {
        let Some(key) = key.0.as_deref() else {
            return Err(ApiError::new(
                Rc::InvalidAPIKey,
                "No API key provided. Use 0000000000 for anonymous access.",
            ));
        };
        let hash = self.accounts.hash_key(key);
        let user = self
            .store
            .user_by_key_hash(&hash)
            .await?
            .ok_or_else(|| ApiError::new(Rc::InvalidAPIKey, "No user matching sent API Key. Have you remembered to register at https://aihorde.net/register ?"))?;
        if user.deleted_at.is_some() {
            return Err(ApiError::new(Rc::DeletedUser, "This account was deleted."));
        }
        Ok(user)
    }

    /// [`AppState::authenticate`] through the user cache: the user as read at most
    /// `max_age_ms` ago. Roles and keys changed through the API clear the cache at once; kudos
    /// in it may be that old (callers that decide on kudos read them afresh).
    pub async fn cached_user(&self, key: &ApiKey, max_age_ms: u64) -> ApiResult<User> {
        let Some(raw) = key.0.as_deref() else {
            return self.authenticate(key).await;
        };
        let hash = self.accounts.hash_key(raw);
        let now = crate::clock::now_ms();
        if let Some(user) = self.accounts.cached(&hash, now, max_age_ms) {
            return Ok(user);
        }
        let user = self.authenticate(key).await?;
        self.accounts.remember(hash, user.clone(), now);
        Ok(user)
    }

    pub async fn create_user(
        &self,
        username: &str,
        moderator: bool,
        trusted: bool,
        kudos: f64,
        oauth_id: Option<String>,
    ) -> ApiResult<CreatedUser> {
        let api_key = generate_api_key(&mut rand::rng());
        let new = NewUser {
            username: username.to_string(),
            oauth_id: oauth_id.unwrap_or_else(|| format!("pseudo_{}", uuid::Uuid::new_v4())),
            api_key_hash: self.accounts.hash_key(&api_key),
            moderator,
            trusted: trusted || moderator,
            kudos,
            created: now(),
        };
        let user = self.store.create_user(&new).await?;
        Ok(CreatedUser { user, api_key })
    }

    /// The public horde's test-only bootstrap: creates the user, or rotates the key of the user
    /// with that `oauth_id`.
    pub async fn test_user(&self, req: TestUserRequest) -> ApiResult<(bool, TestUserResponse)> {
        if req.username.trim().is_empty() || req.username.chars().count() > 30 {
            return Err(ApiError::new(
                Rc::BadRequest,
                "username must be 1..30 characters.",
            ));
        }
        let existing = match &req.oauth_id {
            Some(oauth) => self.store.user_by_oauth_id(oauth).await?,
            None => None,
        };
        let (created, user, api_key) = match existing {
            Some(user) => {
                let api_key = generate_api_key(&mut rand::rng());
                let trusted = req.trusted || req.moderator;
                self.store
                    .reset_user(
                        user.id,
                        &self.accounts.hash_key(&api_key),
                        req.moderator,
                        trusted,
                        req.kudos,
                        now(),
                    )
                    .await?;
                let user = self
                    .store
                    .user_by_id(user.id)
                    .await?
                    .ok_or_else(|| ApiError::internal("user vanished"))?;
                (false, user, api_key)
            }
            None => {
                let c = self
                    .create_user(
                        &req.username,
                        req.moderator,
                        req.trusted,
                        req.kudos,
                        req.oauth_id.clone(),
                    )
                    .await?;
                (true, c.user, c.api_key)
            }
        };
        self.accounts.forget_all();
        Ok((
            created,
            TestUserResponse {
                api_key,
                user_id: user.id,
                username: user.username.clone(),
                alias: user.alias(),
                kudos: user.kudos,
                trusted: user.trusted,
                moderator: user.moderator,
                created,
            },
        ))
    }

    /// `GET /users/{id}`: the user's details as `viewer` may see them.
    pub async fn user_details_by_id(
        &self,
        id: &str,
        viewer: Option<&User>,
    ) -> ApiResult<UserDetails> {
        let not_found = || user_not_found(id);
        let id = parse_user_id(id)?;
        let user = self.store.user_by_id(id).await?.ok_or_else(not_found)?;
        self.user_details_with_flows(&user, Privilege::of(viewer, user.id))
            .await
    }

    /// `GET /find_user`: the details of the key's own user.
    pub async fn find_user(&self, user: &User) -> ApiResult<UserDetails> {
        self.user_details_with_flows(user, Privilege::of(Some(user), user.id))
            .await
    }

    /// [`AppState::user_details`] with the kudos details summed from the user's ledger.
    pub async fn user_details_with_flows(
        &self,
        user: &User,
        privilege: Privilege,
    ) -> ApiResult<UserDetails> {
        let flows = self.store.kudos_flows(user.id).await?;
        let mut details = self.user_details(user, privilege);
        if privilege >= Privilege::Own {
            details.daily_quota = Some(self.daily_quota(user, privilege).await?);
            details.sharedkey_ids = Some(self.shared_key_handles(user).await?);
        }
        details.styles = self.styles_brief(user).await?;
        let k = &mut details.kudos_details;
        (
            k.gifted, k.donated, k.received, k.admin, k.awarded, k.styled,
        ) = (
            flows.gifted,
            flows.donated,
            flows.received,
            flows.admin,
            flows.awarded,
            flows.styled,
        );
        Ok(details)
    }

    /// The user's unfinished requests, by kind.
    fn active_generations(&self, user_id: i64) -> ActiveGenerations {
        fn unfinished<K: ServedKind>(state: &AppState, user_id: i64) -> Option<Vec<String>> {
            let mut ids: Vec<String> = K::live(state).read(|queue| {
                queue
                    .requests()
                    .filter(|r| r.user_id == user_id && !r.is_done())
                    .map(|r| r.id.to_string())
                    .collect()
            });
            ids.sort();
            (!ids.is_empty()).then_some(ids)
        }
        ActiveGenerations {
            image: unfinished::<horde_core::Image>(self, user_id),
            text: unfinished::<horde_core::text::Text>(self, user_id),
            alchemy: unfinished::<horde_core::alchemy::Alchemy>(self, user_id),
        }
    }

    /// Details of `user` with what `privilege` may see.
    pub fn user_details(&self, user: &User, privilege: Privilege) -> UserDetails {
        let (worker_ids, suspicion) = self.workers.read(|registry| {
            (
                registry.ids_of_user(user.id),
                registry.suspicion_of_user(user.id),
            )
        });
        let own = privilege >= Privilege::Own;
        let moderator = privilege >= Privilege::Moderator;
        let active = own.then(|| self.active_generations(user.id));
        UserDetails {
            username: user.alias(),
            id: user.id,
            kudos: user.kudos,
            kudos_details: UserKudosDetails {
                accumulated: user.kudos_accumulated,
                ..Default::default()
            },
            usage: serde_json::json!({}),
            contributions: serde_json::json!({}),
            records: UserRecords {
                usage: UsageRecord {
                    megapixelsteps: user.usage_megapixelsteps,
                    tokens: user.usage_tokens.round() as u64,
                },
                contribution: UsageRecord {
                    megapixelsteps: user.contributed_megapixelsteps,
                    tokens: user.contributed_tokens.round() as u64,
                },
                fulfillment: CountRecord {
                    image: user.fulfilments,
                    text: user.text_fulfilments,
                    interrogation: user.interrogation_fulfilments,
                },
                request: CountRecord {
                    image: user.usage_requests,
                    text: user.text_requests,
                    interrogation: user.interrogation_requests,
                },
            },
            concurrency: user.concurrency,
            worker_invited: user.worker_invited,
            moderator: user.moderator,
            trusted: user.trusted,
            flagged: user.flagged,
            pseudonymous: user.pseudonymous,
            customizer: user.customizer,
            service: user.service,
            education: user.education,
            vpn: user.vpn,
            special: false,
            deleted: user.deleted_at.is_some(),
            styles: vec![],
            worker_count: worker_ids.len() as u32,
            // As on the public horde: the ids for the user themself and moderators, and for
            // everyone when the user made their workers public.
            worker_ids: (own || user.public_workers).then_some(worker_ids),
            account_age: (now() - user.created).max(0) as u64,
            active_generations: active,
            sharedkey_ids: own.then(Vec::new),
            contact: own.then_some(None),
            evaluating_kudos: own.then_some(user.evaluating_kudos),
            monthly_kudos: moderator.then(MonthlyKudos::default),
            suspicious: moderator.then_some(suspicion),
            admin_comment: moderator.then_some(None),
            daily_quota: None,
        }
    }

    /// `user`'s tier, its limits and today's use of them; for a moderator also the tiers the
    /// user may be moved into.
    async fn daily_quota(&self, user: &User, privilege: Privilege) -> ApiResult<DailyQuota> {
        let quotas = &self.config.quotas;
        let quota = quotas.for_user(user);
        let now = now();
        let used = self.store.quota_usage(user.id, quota::day_of(now)).await?;
        let resets_in = quota::secs_to_next_day(now);
        Ok(DailyQuota {
            tier: quotas.tier_of(user),
            images_per_day: quota.images_per_day,
            megapixelsteps_per_day: quota.megapixelsteps_per_day,
            texts_per_day: quota.texts_per_day,
            tokens_per_day: quota.tokens_per_day,
            images_used: used.images,
            megapixelsteps_used: used.megapixelsteps,
            texts_used: used.texts,
            tokens_used: used.tokens,
            resets_in: resets_in as u64,
            resets_at: crate::shared_keys::rfc3339(now + resets_in),
            tiers: (privilege >= Privilege::Moderator).then(|| quotas.tier_names()),
        })
    }
}

impl AppState {
    /// `POST /kudos/transfer`: moves kudos from `sender` to the user named `alias#id`, with the
    /// public horde's rules and return codes, as one ledger entry.
    pub async fn transfer_kudos(
        &self,
        sender: &User,
        request: &KudosTransferRequest,
    ) -> ApiResult<KudosTransferred> {
        request.validate().map_err(ApiError::validation)?;
        let invalid_target = || {
            ApiError::new(
                Rc::InvalidTargetUsername,
                format!("Invalid target username '{}'.", request.username),
            )
        };
        let target_id =
            horde_core::accounts::user_id_of_alias(&request.username).ok_or_else(invalid_target)?;
        let _turn = self.live.write_turn().await;
        let receiver = self
            .store
            .user_by_id(target_id)
            .await?
            .ok_or_else(invalid_target)?;
        let sender = self
            .store
            .user_by_id(sender.id)
            .await?
            .ok_or_else(|| ApiError::internal("sender vanished"))?;
        let reverse = self.store.last_transfer(receiver.id, sender.id).await?;
        user_rules::check_transfer(&sender, &receiver, request.amount, reverse, now())
            .map_err(refused)?;
        self.store
            .transfer_kudos(sender.id, receiver.id, request.amount, now())
            .await?;
        tracing::info!(
            from = sender.id,
            to = receiver.id,
            amount = request.amount,
            "kudos transferred"
        );
        self.accounts.forget_all();
        Ok(KudosTransferred {
            transferred: request.amount,
        })
    }
}

impl AppState {
    /// `PUT /users/{id}`: administrators change balances and moderators; moderators roles and
    /// limits; a user their own name and profile.
    pub async fn modify_user(
        &self,
        caller: &User,
        id: &str,
        change: ModifyUser,
    ) -> ApiResult<ModifyUserResponse> {
        change.validate().map_err(ApiError::validation)?;
        if change.is_empty() {
            return Err(ApiError::new(
                Rc::NoUserModSelected,
                "No user modification selected!",
            ));
        }
        let not_found = || user_not_found(id);
        let id = parse_user_id(id)?;
        let mut user = self.store.user_by_id(id).await?.ok_or_else(not_found)?;
        user_rules::check_user_change(caller, self.is_admin(caller), &user, &change)
            .map_err(refused)?;
        let tier = match &change.tier {
            Some(name) => Some(
                self.config
                    .quotas
                    .tier_change(&user, name)
                    .map_err(refused)?,
            ),
            None => None,
        };
        let was_trusted = user.trusted;
        user_rules::apply_user_change(&mut user, &change);
        if let Some(tier) = &tier {
            tier.apply(&mut user);
        }
        let became_trusted = user.trusted && !was_trusted;
        self.store.save_user_settings(&user).await?;
        // Roles may have changed: worker owners are read again on their next pop, and their
        // workers' details show the new roles now.
        self.accounts.forget_all();
        self.workers
            .change(|registry| registry.note_owner_roles(&user));
        let now = now();
        if let Some(amount) = change.kudos {
            self.store.award_kudos(user.id, amount, now).await?;
        }
        if became_trusted {
            self.store.release_escrow(user.id, now).await?;
        }
        if change.reset_suspicion == Some(true) {
            self.clear_suspicion_of_user_workers(user.id).await?;
        }
        tracing::info!(user = user.id, by = caller.id, ?change, "user modified");
        let new_kudos = match change.kudos {
            Some(_) => self.store.user_by_id(user.id).await?.map(|u| u.kudos),
            None => None,
        };
        Ok(ModifyUserResponse {
            changed: change,
            new_kudos,
        })
    }

    pub(crate) fn is_admin(&self, user: &User) -> bool {
        !user.is_anonymous() && self.config.api.admins.contains(&user.id)
    }

    async fn clear_suspicion_of_user_workers(&self, user_id: i64) -> ApiResult<()> {
        let turn = self.live.write_turn().await;
        let ids: Vec<uuid::Uuid> = self.workers.read(|registry| {
            registry
                .ids_of_user(user_id)
                .iter()
                .filter_map(|id| id.parse().ok())
                .collect()
        });
        for id in ids {
            self.change_reputation_ordered(&turn, id, |r| r.clear_suspicion())
                .await?;
        }
        Ok(())
    }

    /// `GET /users/{id}/ledger`: the user themself or a moderator.
    pub async fn ledger_of(
        &self,
        caller: &User,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> ApiResult<Vec<horde_api::user::LedgerEntry>> {
        let not_found = || user_not_found(id);
        let id = parse_user_id(id)?;
        if id != caller.id && !caller.moderator {
            return Err(ApiError::new(
                Rc::NotOwner,
                "Only the user themself or a moderator can read a kudos ledger.",
            ));
        }
        self.store.user_by_id(id).await?.ok_or_else(not_found)?;
        Ok(self.store.ledger_entries(id, before, limit).await?)
    }

    /// A new API key for `caller` (only for themself); the old key stops working at once.
    pub async fn reset_api_key(&self, caller: &User, id: &str) -> ApiResult<NewApiKey> {
        if id.parse::<i64>().ok() != Some(caller.id) {
            return Err(ApiError::new(
                Rc::NotOwner,
                "Only the user themself can reset their API key.",
            ));
        }
        let api_key = generate_api_key(&mut rand::rng());
        self.store
            .replace_key_hash(caller.id, &self.accounts.hash_key(&api_key))
            .await?;
        self.accounts.forget_all();
        tracing::info!(user = caller.id, "API key reset");
        Ok(NewApiKey { api_key })
    }
}
