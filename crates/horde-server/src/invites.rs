//! Invite codes: created, listed and deleted by moderators (`/invites`), checked and spent by
//! `/register` when `[registration] mode = "invite"`. The rules are `horde_core::invites`; a
//! code is stored only as its salted hash and shown once, in the answer that creates it.

use crate::clock::now_ms;
use crate::error::{refused, ApiError, ApiResult};
use crate::shared_keys::rfc3339;
use crate::state::AppState;
use horde_api::invite::{InviteDetails, InviteInput};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::invites::{self, Invite, EXPIRED_KEPT_MS, MAX_INVITES};
use horde_core::keys::generate_api_key;
use horde_core::registration::RegistrationRefusal;
use std::collections::HashMap;

impl AppState {
    /// The stored hash of invite code `code`.
    fn invite_hash(&self, code: &str) -> String {
        self.accounts.hash_key(&invites::hashed_text(code))
    }

    /// `POST /invites`: a new code, shown once.
    pub async fn create_invite(
        &self,
        moderator: &User,
        input: InviteInput,
    ) -> ApiResult<InviteDetails> {
        input.validate().map_err(ApiError::validation)?;
        let code = generate_api_key(&mut rand::rng());
        let now = now_ms() as i64;
        let invite = Invite {
            id: uuid::Uuid::new_v4().to_string(),
            code_hash: self.invite_hash(&code),
            created_by: moderator.id,
            note: input.note.unwrap_or_default().trim().to_string(),
            max_uses: input.uses,
            uses: 0,
            created_ms: now,
            expires_ms: invites::expiry_of(now, input.hours),
        };
        if !self
            .store
            .insert_invite(&invite, now - EXPIRED_KEPT_MS, MAX_INVITES)
            .await?
        {
            return Err(ApiError::new(
                Rc::Forbidden,
                format!(
                    "This horde already keeps {MAX_INVITES} invites: delete used or expired ones first."
                ),
            ));
        }
        tracing::info!(by = moderator.id, invite = %invite.id, "invite created");
        let mut details = invite_details(&invite, &moderator.alias());
        details.code = Some(code);
        Ok(details)
    }

    /// `GET /invites`: every invite kept, newest first, without its code.
    pub async fn list_invites(&self) -> ApiResult<Vec<InviteDetails>> {
        let list = self.store.invites(MAX_INVITES).await?;
        let mut aliases: HashMap<i64, String> = HashMap::new();
        let mut out = Vec::with_capacity(list.len());
        for invite in &list {
            let alias = match aliases.get(&invite.created_by) {
                Some(alias) => alias.clone(),
                None => {
                    let alias = match self.store.user_by_id(invite.created_by).await? {
                        Some(user) => user.alias(),
                        None => format!("#{}", invite.created_by),
                    };
                    aliases.insert(invite.created_by, alias.clone());
                    alias
                }
            };
            out.push(invite_details(invite, &alias));
        }
        Ok(out)
    }

    /// `DELETE /invites/{id}`: the code stops working at once.
    pub async fn delete_invite(&self, moderator: &User, id: &str) -> ApiResult<()> {
        if !self.store.delete_invite(id).await? {
            return Err(ApiError::new(Rc::ThingNotFound, "No invite has this id."));
        }
        tracing::info!(by = moderator.id, invite = %id, "invite deleted");
        Ok(())
    }

    /// The invite a form's code names, if it may still create an account: nothing is spent.
    pub(crate) async fn check_invite(&self, code: Option<&str>) -> ApiResult<Invite> {
        let code = invites::check_code(code).map_err(refused)?;
        let invite = self
            .store
            .invite_by_code_hash(&self.invite_hash(code))
            .await?
            .ok_or_else(|| refused(RegistrationRefusal::WrongInvite))?;
        invite.check(now_ms() as i64).map_err(refused)?;
        Ok(invite)
    }

    /// Spends one use of `invite` (refused when another attempt spent the last one first).
    pub(crate) async fn redeem_invite(&self, invite: &Invite) -> ApiResult<()> {
        if self
            .store
            .redeem_invite(&invite.id, now_ms() as i64)
            .await?
        {
            Ok(())
        } else {
            Err(refused(RegistrationRefusal::UsedInvite))
        }
    }
}

fn invite_details(invite: &Invite, created_by: &str) -> InviteDetails {
    InviteDetails {
        id: invite.id.clone(),
        code: None,
        note: invite.note.clone(),
        uses: invite.max_uses,
        used: invite.uses,
        expires: rfc3339(invite.expires_ms.div_euclid(1000)),
        created_by: created_by.to_string(),
    }
}
