//! `GET /register` and `POST /register`: the self-service sign-up page, rendered on the server
//! and usable without JavaScript (the public horde's form field `username`; `invite_code` when
//! registration is invite-only).
//!
//! The page lives outside `/api/`, so it is not in the OpenAPI document; a client that asks for
//! JSON (`Accept: application/json`) gets the AI Horde error body `{message, rc}` instead of the
//! page. The form's cookie is `HttpOnly; SameSite=Strict` and scoped to `/register`; the page
//! forbids framing and every script (it has none); the key page is never cached.

use crate::dashboard::escape;
use crate::error::ApiError;
use crate::registration::{register, Attempt, FormTicket};
use crate::state::SharedState;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use horde_api::Rc;
use horde_core::invites::MAX_CODE_CHARS;
use horde_core::registration::{check_same_site, RegistrationMode, MAX_NAME_CHARS};
use std::fmt::Write;
use std::net::SocketAddr;

/// The cookie the form's token is bound to.
const COOKIE: &str = "horde_register";

/// No script, no framing, forms only to this horde.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The submitted form (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct RegisterForm {
    pub username: Option<String>,
    pub csrf_token: Option<String>,
    pub pow_nonce: Option<String>,
    /// A moderator's invite code (`[registration] mode = "invite"`).
    pub invite_code: Option<String>,
}

/// `GET /register`: the form.
pub async fn form(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let ticket = state.registration_form(cookie(&headers).as_deref());
    form_page(&state, &ticket, StatusCode::OK, None, "")
}

/// `POST /register`: creates the account and shows its key once, or the form again with why.
pub async fn submit(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<RegisterForm>, FormRejection>,
) -> Response {
    let json = wants_json(&headers);
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            let error = ApiError::new(Rc::BadRequest, rejection.body_text());
            return refusal(&state, &headers, error, "", json);
        }
    };
    let username = form.username.clone().unwrap_or_default();
    if let Err(cross) = same_site(&state, &headers) {
        return refusal(
            &state,
            &headers,
            crate::error::refused(cross),
            &username,
            json,
        );
    }
    let cookie = cookie(&headers);
    let attempt = Attempt {
        cookie: cookie.as_deref(),
        token: form.csrf_token.as_deref(),
        username: form.username.as_deref(),
        pow_nonce: form.pow_nonce.as_deref(),
        invite_code: form.invite_code.as_deref(),
        client: state.trusted_proxies.client(peer.ip(), &headers),
    };
    match register(&state, attempt).await {
        Ok(created) if json => no_store(
            (
                StatusCode::CREATED,
                Json(serde_json::json!({
                    "id": created.user.id,
                    "username": created.user.alias(),
                    "api_key": created.api_key,
                })),
            )
                .into_response(),
        ),
        Ok(created) => key_page(&created.user.alias(), &created.api_key),
        Err(error) => refusal(&state, &headers, error, &username, json),
    }
}

/// The hosts a form may come from: the request's `Host` and the public URL's.
fn same_site(
    state: &SharedState,
    headers: &HeaderMap,
) -> Result<(), horde_core::registration::RegistrationRefusal> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let public = state
        .public_url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    let mut hosts = vec![public];
    hosts.extend(text(header::HOST));
    check_same_site(text(header::ORIGIN), text(header::REFERER), &hosts)
}

/// The refusal as JSON, or the form again (with a fresh token) showing the message.
fn refusal(
    state: &SharedState,
    headers: &HeaderMap,
    error: ApiError,
    username: &str,
    json: bool,
) -> Response {
    if json {
        return error.into_response();
    }
    let ticket = state.registration_form(cookie(headers).as_deref());
    let mut page = form_page(
        state,
        &ticket,
        error.status,
        Some(&error.body.message),
        username,
    );
    if let Some(secs) = error.retry_after {
        page.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    page
}

/// Whether the client asked for JSON rather than a page (in `Accept`, or by sending JSON).
fn wants_json(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
    };
    let accept = text(header::ACCEPT);
    (accept.contains("application/json") && !accept.contains("text/html"))
        || text(header::CONTENT_TYPE).starts_with("application/json")
}

/// The value of our cookie in the request, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_string())
        })
}

fn form_page(
    state: &SharedState,
    ticket: &FormTicket,
    status: StatusCode,
    error: Option<&str>,
    username: &str,
) -> Response {
    let mut html = start("Register");
    html.push_str(
        "<p>Choose a name to create an account. Names need not be unique: you will be \
         <code>name#id</code>. The account is pseudonymous: its API key is all there is, so \
         a lost key cannot be recovered.</p>\n",
    );
    if let Some(message) = error {
        let _ = writeln!(
            html,
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(message)
        );
    }
    let _ = write!(
        html,
        "<form method=\"post\" action=\"/register\">\n\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\n\
         <p><label for=\"username\">Username</label> \
         <input id=\"username\" name=\"username\" required maxlength=\"{MAX_NAME_CHARS}\" \
         value=\"{}\" autocomplete=\"username\"></p>\n",
        escape(&ticket.token),
        escape(username)
    );
    if state.config.registration.mode == RegistrationMode::Invite {
        let _ = write!(
            html,
            "<p>Registration on this horde is by invitation: a moderator gives you a code.</p>\n\
             <p><label for=\"invite_code\">Invite code</label> \
             <input id=\"invite_code\" name=\"invite_code\" required maxlength=\"{MAX_CODE_CHARS}\" \
             autocomplete=\"off\"></p>\n"
        );
    }
    let bits = state.config.registration.proof_of_work_bits;
    if bits > 0 {
        let _ = write!(
            html,
            "<p>This horde asks for a proof of work: a number <code>N</code> such that \
             <code>sha256(challenge \":\" N)</code> starts with {bits} zero bits, where the \
             challenge is:</p>\n<pre>{}</pre>\n<p>For example: <code>python3 -c \"import \
             hashlib,itertools,sys;c=sys.argv[1];print(next(n for n in itertools.count() if \
             int.from_bytes(hashlib.sha256(f'{{c}}:{{n}}'.encode()).digest(),'big')&gt;&gt;(256-{bits})==0))\" \
             CHALLENGE</code></p>\n<p><label for=\"pow_nonce\">Proof of work</label> \
             <input id=\"pow_nonce\" name=\"pow_nonce\" required inputmode=\"numeric\"></p>\n",
            escape(&ticket.token)
        );
    }
    html.push_str("<p><button type=\"submit\">Create my account</button></p>\n</form>\n");
    html.push_str(LINKS);
    let mut response = page(status, html);
    if ticket.new_cookie {
        set_cookie(state, &mut response, &ticket.cookie);
    }
    response
}

/// `Set-Cookie` for the form's cookie (`Secure` when the horde is served over HTTPS).
fn set_cookie(state: &SharedState, response: &mut Response, value: &str) {
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={value}; Path=/register; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        horde_core::registration::TOKEN_TTL_MS / 1000
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

fn key_page(alias: &str, api_key: &str) -> Response {
    let mut html = start("Your account");
    let _ = write!(
        html,
        "<p>Welcome, <strong id=\"alias\">{}</strong>.</p>\n\
         <p class=\"error\" role=\"alert\"><strong>Store it now: it is shown only once and \
         cannot be recovered.</strong> Treat it like a password.</p>\n\
         <p>Your API key: <code id=\"api-key\">{}</code></p>\n",
        escape(alias),
        escape(api_key)
    );
    html.push_str(LINKS);
    page(StatusCode::CREATED, html)
}

const LINKS: &str = "<p><a href=\"/api/\">The API's documentation</a> · \
     <a href=\"/\">The dashboard</a></p>\n</main></body></html>\n";

fn start(title: &str) -> String {
    let mut html = String::with_capacity(4096);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>\
         body{{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f7f7f5}}\
         main{{max-width:40rem;margin:0 auto;padding:1rem}}.error{{color:#a50e0e}}\
         code,pre{{word-break:break-all;white-space:pre-wrap}}\
         input:focus,button:focus,a:focus{{outline:3px solid #f4b400}}</style>\n\
         </head><body><main>\n<h1>{title}</h1>\n"
    );
    html
}

fn page(status: StatusCode, html: String) -> Response {
    no_store(
        (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            ],
            html,
        )
            .into_response(),
    )
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
