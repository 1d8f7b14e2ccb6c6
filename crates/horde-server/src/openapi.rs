//! The OpenAPI document, generated from the wire types and the handlers' annotations, with
//! the answers every operation can give added in one place ([`CommonAnswers`]): 429 where a
//! rate limit applies, 401 where an API key is read, 400 where a body or query is parsed.

use crate::routes::{filters, generate, shared_keys, status, users, workers};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "horde — AI Horde API v2", description = "A Rust coordinator compatible with AI Horde API v2."),
    paths(
        generate::generate_async, generate::check, generate::status, generate::cancel, generate::pop, generate::submit,
        generate::upload, generate::image,
        workers::list, workers::get, workers::by_name, workers::modify,
        users::get, users::find_user, users::test_user, users::transfer, users::modify, users::reset_key, users::ledger,
        shared_keys::create, shared_keys::get, shared_keys::modify, shared_keys::delete,
        filters::list, filters::add, filters::check, filters::regex, filters::get, filters::modify, filters::delete,
        status::heartbeat, status::models, status::model, status::performance, status::image_totals, status::image_models,
    ),
    tags((name = "v2", description = "AI Horde API v2"), (name = "dev", description = "Test-only endpoints")),
    modifiers(&CommonAnswers)
)]
pub struct ApiDoc;

/// Adds the answers that do not depend on the operation's own logic.
pub struct CommonAnswers;

/// Paths the rate-limit layer does not count (`ratelimit::limits_for`).
const UNLIMITED: &[&str] = &[
    "/api/v2/status/heartbeat",
    "/api/v2/uploads/",
    "/api/v2/images/",
];

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let limited = !UNLIMITED.iter().any(|p| path.starts_with(p));
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_common_answers(operation, limited);
            }
        }
    }
}

fn add_common_answers(operation: &mut Operation, limited: bool) {
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let reads_key = parameters
        .iter()
        .any(|p| p.name == "apikey" && matches!(p.parameter_in, ParameterIn::Header));
    let parses_input = operation.request_body.is_some()
        || parameters
            .iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path));
    let answers = &mut operation.responses.responses;
    let mut add = |status: &str, description: &str| {
        answers.entry(status.to_string()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        });
    };
    if limited {
        add(
            "429",
            "A rate limit was reached (`Retry-After` says when to try again).",
        );
    }
    if reads_key {
        add("401", "The API key is not known.");
    }
    if parses_input {
        add("400", "The input is malformed or out of bounds.");
    }
}
