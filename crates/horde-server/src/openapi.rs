//! The OpenAPI document, generated from the wire types and the handlers' annotations.

use crate::routes::{filters, generate, shared_keys, status, users, workers};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "horde — AI Horde API v2", description = "A Rust coordinator compatible with AI Horde API v2."),
    paths(
        generate::generate_async, generate::check, generate::status, generate::cancel, generate::pop, generate::submit,
        workers::list, workers::get, workers::by_name, workers::modify,
        users::get, users::find_user, users::test_user, users::transfer, users::modify, users::reset_key, users::ledger,
        shared_keys::create, shared_keys::get, shared_keys::modify, shared_keys::delete,
        filters::list, filters::add, filters::check, filters::regex, filters::get, filters::modify, filters::delete,
        status::heartbeat, status::models, status::model, status::performance, status::image_totals, status::image_models,
    ),
    tags((name = "v2", description = "AI Horde API v2"), (name = "dev", description = "Test-only endpoints"))
)]
pub struct ApiDoc;
