//! Self-service registration (`/register`): the service behind the form.
//!
//! The rules are `horde_core::registration`'s; here they meet the clock, the secret and the
//! counters. The form's secret is derived from the upload secret, which is stored in the
//! database (`settings`), so every coordinator sharing a PostgreSQL database accepts a form
//! another one served. A token's single use and the per-address limit are counted through the
//! API's limiter (`ratelimit::hit_once`): in this process, or in the shared database when
//! clustered, so neither can be dodged by choosing a coordinator.

use crate::clock::now_ms;
use crate::error::{refused, ApiError, ApiResult};
use crate::ratelimit::hit_once;
use crate::state::SharedState;
use crate::users::CreatedUser;
use base64::Engine;
use horde_api::Rc;
use horde_core::keys::hash_api_key;
use horde_core::ratelimit::Limit;
use horde_core::registration::{
    check_name, check_proof, check_token, limit_key, sign_token, RegistrationMode,
    RegistrationRefusal, TOKEN_TTL_MS,
};
use rand::RngCore;
use std::net::IpAddr;

/// A form to serve: the browser's cookie (new or kept) and the token bound to it.
pub struct FormTicket {
    pub cookie: String,
    /// Whether the cookie is new (to be set on the answer).
    pub new_cookie: bool,
    pub token: String,
}

/// One submitted form, as the handler read it.
pub struct Attempt<'a> {
    pub cookie: Option<&'a str>,
    pub token: Option<&'a str>,
    pub username: Option<&'a str>,
    pub pow_nonce: Option<&'a str>,
    /// The moderator's invite code (`[registration] mode = "invite"`).
    pub invite_code: Option<&'a str>,
    /// The client's address (behind trusted proxies).
    pub client: IpAddr,
}

/// A cookie value this module made: 22 URL-safe characters.
fn is_cookie_shaped(value: &str) -> bool {
    value.len() == 22
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_text() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl crate::state::AppState {
    /// The key the form's tokens are signed with, derived from the stored upload secret.
    fn form_secret(&self) -> Vec<u8> {
        hash_api_key("horde /register form key|", &self.upload_secret).into_bytes()
    }

    /// A fresh token for the browser holding `cookie` (kept when it is one of ours).
    pub fn registration_form(&self, cookie: Option<&str>) -> FormTicket {
        let (cookie, new_cookie) = match cookie.filter(|c| is_cookie_shaped(c)) {
            Some(c) => (c.to_string(), false),
            None => (random_text(), true),
        };
        let token = sign_token(
            &self.form_secret(),
            &cookie,
            &random_text(),
            now_ms() + TOKEN_TTL_MS,
        );
        FormTicket {
            cookie,
            new_cookie,
            token,
        }
    }
}

/// Creates the account an attempt asks for, or refuses with nothing stored: registration off,
/// a bad token (missing, forged, for another cookie, expired, used), a bad name, a missing,
/// wrong, used-up or expired invite code (invite-only mode), a missing or wrong proof of work,
/// then the address's limit.
pub async fn register(state: &SharedState, attempt: Attempt<'_>) -> ApiResult<CreatedUser> {
    let config = &state.config.registration;
    if config.mode == RegistrationMode::Off {
        return Err(refused(RegistrationRefusal::Closed));
    }
    let now = now_ms();
    let token =
        check_token(&state.form_secret(), attempt.cookie, attempt.token, now).map_err(refused)?;
    let name = check_name(attempt.username.unwrap_or_default()).map_err(refused)?;
    let invite = match config.mode {
        RegistrationMode::Invite => Some(state.check_invite(attempt.invite_code).await?),
        _ => None,
    };
    let challenge = attempt.token.unwrap_or_default();
    check_proof(challenge, attempt.pow_nonce, config.proof_of_work_bits).map_err(refused)?;
    use_token_once(state, &token.nonce, token.expires_ms).await?;
    count_address(state, attempt.client, now).await?;
    if let Some(invite) = &invite {
        state.redeem_invite(invite).await?;
    }
    let created = match state.create_user(&name, false, false, 0.0, None).await {
        Ok(created) => created,
        Err(error) => {
            // The account was not made: the invite keeps its use.
            if let Some(invite) = &invite {
                state.store.unredeem_invite(&invite.id).await?;
            }
            return Err(error);
        }
    };
    tracing::info!(
        user_id = created.user.id,
        invite = invite.as_ref().map(|i| i.id.as_str()),
        "registered through /register"
    );
    Ok(created)
}

/// Marks a token used; a second use is refused. Counted at the token's expiry, so its window
/// lasts at least as long as the token is valid.
async fn use_token_once(state: &SharedState, nonce: &str, expires_ms: u64) -> ApiResult<()> {
    let once = Limit {
        count: 1,
        window_ms: TOKEN_TTL_MS,
    };
    let verdict = hit_once(state, format!("register-token@{nonce}"), once, expires_ms).await?;
    if verdict.allowed {
        Ok(())
    } else {
        Err(refused(RegistrationRefusal::ReusedToken))
    }
}

/// Counts an attempt that would create an account against its address (IPv6: its /64).
async fn count_address(state: &SharedState, client: IpAddr, now: u64) -> ApiResult<()> {
    let per_hour = state.config.registration.per_ip_per_hour;
    if per_hour == 0 {
        return Ok(());
    }
    let limit = Limit::per_hour(per_hour);
    let key = format!("register@{}#{}", limit_key(client), limit.window_ms);
    let verdict = hit_once(state, key, limit, now).await?;
    if verdict.allowed {
        return Ok(());
    }
    let retry = verdict.reset_in_ms.div_ceil(1000).max(1);
    Err(ApiError::new(
        Rc::RateLimited,
        format!(
            "Too many registrations from your address ({per_hour} an hour): try again in {} minutes.",
            retry.div_ceil(60)
        ),
    )
    .retry_after(retry))
}
