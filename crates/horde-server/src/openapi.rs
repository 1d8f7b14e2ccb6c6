//! The OpenAPI document, generated from the wire types and the handlers' annotations, with
//! the answers every operation can give added in one place ([`CommonAnswers`]): 429 where a
//! rate limit applies, 401 where an API key is read, 400 where a body or query is parsed; and
//! the rules of the input that field attributes cannot state added in another
//! ([`input_rules`]): the bounds named by constants in `horde_api`, no NUL byte anywhere, at
//! least one field in a modification. Schemathesis (`compat/schemathesis`) holds the server
//! to the result.

use crate::routes::{filters, generate, shared_keys, status, users, workers};
use horde_api::image::{
    MAX_EXTRA_SOURCE_IMAGES, MAX_LIST_ENTRY_CHARS, MAX_POP_LIST, MAX_POP_POST_PROCESSORS,
    MAX_REQUEST_MODELS, MAX_REQUEST_WORKERS, MAX_SEED_CHARS, POST_PROCESSORS,
};
use horde_api::text::{
    MAX_NAME_CHARS, MAX_SOFTPROMPT_CHARS, MAX_TEXT_MODELS, MAX_TEXT_WORKERS, MAX_WORKER_SOFTPROMPTS,
};
use horde_core::accounts::ALIAS_ID_PATTERN;
use serde_json::{json, Value};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "horde — AI Horde API v2", description = "A Rust coordinator compatible with AI Horde API v2."),
    paths(
        generate::generate_async, generate::generate_batch, generate::batch_status, generate::cancel_batch, generate::check, generate::status, generate::cancel, generate::pop, generate::submit,
        generate::upload, generate::image, crate::routes::sources::download, crate::streaming::stream,
        crate::routes::text::generate_async, crate::routes::text::status, crate::routes::text::cancel,
        crate::routes::text::pop, crate::routes::text::submit,
        crate::routes::interrogate::interrogate_async, crate::routes::interrogate::status,
        crate::routes::interrogate::cancel, crate::routes::interrogate::pop,
        crate::routes::interrogate::submit,
        workers::list, workers::get, workers::by_name, workers::modify,
        users::get, users::find_user, users::test_user, users::transfer, users::modify, users::reset_key, users::ledger,
        users::webhook_secret, users::rotate_webhook_secret,
        shared_keys::create, shared_keys::get, shared_keys::modify, shared_keys::delete,
        filters::list, filters::add, filters::check, filters::regex, filters::get, filters::modify, filters::delete,
        status::heartbeat, status::models, status::model, status::performance, status::image_totals, status::image_models,
        status::text_totals, status::text_models,
    ),
    // Types named only by a query parameter, which utoipa does not collect from the paths.
    components(schemas(horde_api::status::ModelState)),
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
    "/api/v2/sources/",
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
        // A deleted account's key is refused everywhere (`DeletedUser`, `modes.rs`).
        add(
            "403",
            "The API key's account was deleted, or lacks the rights.",
        );
    }
    if parses_input {
        add("400", "The input is malformed or out of bounds.");
    }
}

/// [`ApiDoc`] with each area's own document (`routes::<area>::Doc`) merged in, and the common
/// answers added to every operation.
fn full_openapi() -> utoipa::openapi::OpenApi {
    use crate::routes::{invites, modes, operations, reference, styles, teams};
    let mut doc = ApiDoc::openapi();
    for area in [
        styles::Doc::openapi(),
        teams::Doc::openapi(),
        modes::Doc::openapi(),
        operations::Doc::openapi(),
        reference::Doc::openapi(),
        invites::Doc::openapi(),
    ] {
        doc.merge(area);
    }
    CommonAnswers.modify(&mut doc);
    doc
}

/// The document served at `/api/swagger.json`: [`ApiDoc`] with [`input_rules`] and this
/// server's own prompt limit (`requests.max_prompt_chars`) and quota tiers (`tiers`, those a
/// moderator may move a user into: `Quotas::tier_names`).
pub fn document(max_prompt_chars: usize, tiers: &[String]) -> Value {
    let mut spec = serde_json::to_value(full_openapi()).expect("the spec serialises");
    input_rules(&mut spec);
    merge(
        &mut spec["components"]["schemas"]["ImageRequest"]["properties"]["prompt"],
        json!({"maxLength": max_prompt_chars}),
    );
    let mut names: Vec<Value> = tiers.iter().map(|t| json!(t)).collect();
    names.push(Value::Null); // `"tier": null` is no change, as the field left out
    merge(
        &mut spec["components"]["schemas"]["ModifyUser"]["properties"]["tier"],
        json!({ "enum": names }),
    );
    batch_request_schema(&mut spec["components"]["schemas"], max_prompt_chars);
    spec
}

/// `BatchRequest` is every field of `ImageRequest` but `prompt`, plus `prompts`: its schema is
/// written from `ImageRequest`'s, so the two cannot drift. A member's prompt and negative
/// prompt each get half the prompt limit (`batches::member_prompt_limits`), so that together
/// they never pass it.
fn batch_request_schema(schemas: &mut Value, max_prompt_chars: usize) {
    let mut batch = schemas["ImageRequest"].clone();
    if let Some(properties) = batch["properties"].as_object_mut() {
        properties.remove("prompt");
        properties.insert(
            "prompts".into(),
            schemas["BatchRequest"]["properties"]["prompts"].clone(),
        );
    }
    let mut required: Vec<Value> = batch["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|name| *name != "prompt")
        .cloned()
        .collect();
    required.push("prompts".into());
    batch["required"] = Value::Array(required);
    batch["description"] = schemas["BatchRequest"]["description"].clone();
    schemas["BatchRequest"] = batch;
    let (prompt, negative) = crate::batches::member_prompt_limits(max_prompt_chars);
    let member = &mut schemas["BatchPrompt"]["properties"];
    merge(&mut member["prompt"], json!({"maxLength": prompt}));
    merge(
        &mut member["negative_prompt"],
        json!({"maxLength": negative}),
    );
}

/// A pattern for text without a NUL byte: `extract::parse_json` refuses a body with one in a
/// field it reads (`NulByteInPayload`).
const NO_NUL: &str = "^[^\\x00]*$";

/// Bodies that must change something: each refuses an empty modification with its own rc
/// (`NoWorkerModSelected`, …).
const MODIFICATIONS: &[&str] = &[
    "ModifyWorker",
    "ModifyUser",
    "FilterPatch",
    "SharedKeyPatch",
    "TeamPatch",
    "HordeModesChange",
];

/// Writes into the schemas the rules of the input that the wire types' attributes cannot
/// state (utoipa's model has no `propertyNames` or `anyOf` beside `properties`, hence JSON),
/// so that a client or Schemathesis reading the spec knows exactly what is accepted.
fn input_rules(spec: &mut Value) {
    unsigned_ranges(spec);
    let schemas = &mut spec["components"]["schemas"];
    bounds_from_constants(schemas);
    text_bounds(schemas);
    crate::routes::styles::spec_rules(schemas);
    for name in MODIFICATIONS {
        at_least_one_field(&mut schemas[*name]);
    }
    // Not the error body: it may quote the refused input, NUL and all.
    let error_body = schemas["ErrorBody"].take();
    forbid_nul(schemas);
    schemas["ErrorBody"] = error_body;
    // `params.special` is kept whole, so a NUL anywhere in it is read: any JSON without one.
    schemas["JsonWithoutNul"] = json!({
        "description": "Any JSON value without a NUL byte in a string or a property name.",
        "anyOf": [
            {"type": ["null", "boolean", "number"]},
            {"type": "string", "pattern": NO_NUL},
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonWithoutNul"}},
            {"type": "object", "propertyNames": {"pattern": NO_NUL},
             "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}},
        ]
    });
    schemas["ImageParams"]["properties"]["special"] =
        json!({"$ref": "#/components/schemas/JsonWithoutNul"});
    // An interrogation form's payload and a form's result are read whole likewise.
    let object_without_nul = json!({"type": "object", "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}});
    schemas["InterrogationSubmitRequest"]["properties"]["result"] = object_without_nul.clone();
    schemas["InterrogationForm"]["properties"]["payload"] =
        json!({"anyOf": [{"type": "null"}, object_without_nul]});
}

/// The bounds `horde_api` names as constants, from the constants themselves.
fn bounds_from_constants(schemas: &mut Value) {
    let entries = json!({"maxLength": MAX_LIST_ENTRY_CHARS});
    let edits = [
        (
            "ImageRequest",
            "models",
            json!({"maxItems": MAX_REQUEST_MODELS}),
        ),
        (
            "ImageRequest",
            "workers",
            json!({"maxItems": MAX_REQUEST_WORKERS}),
        ),
        (
            "ImageRequest",
            "extra_source_images",
            json!({"maxItems": MAX_EXTRA_SOURCE_IMAGES}),
        ),
        (
            "PopRequest",
            "priority_usernames",
            json!({"maxItems": MAX_POP_LIST}),
        ),
        ("PopRequest", "blacklist", json!({"maxItems": MAX_POP_LIST})),
        (
            "PopRequest",
            "post_processors",
            json!({"maxItems": MAX_POP_POST_PROCESSORS}),
        ),
        (
            "ImageParams",
            "post_processing",
            json!({"maxItems": POST_PROCESSORS.len()}),
        ),
        // Issue 30's reports (`PopRequest::validate`, `WorkerHardware::check`).
        ("PopRequest", "loaded_models", json!({"maxItems": 300})),
        (
            "WorkerHardware",
            "load_secs",
            json!({"maximum": horde_api::worker::MAX_LOAD_SECS}),
        ),
    ];
    for (schema, property, bounds) in edits {
        merge(&mut schemas[schema]["properties"][property], bounds);
    }
    let items = [
        (
            "ImageRequest",
            "models",
            json!({"minLength": 1, "maxLength": 255}),
        ),
        ("ImageRequest", "workers", json!({"maxLength": 64})),
        (
            "PopRequest",
            "models",
            json!({"minLength": 3, "maxLength": 255}),
        ),
        ("PopRequest", "priority_usernames", entries.clone()),
        ("PopRequest", "blacklist", entries.clone()),
        ("PopRequest", "post_processors", entries.clone()),
        ("PopRequest", "loaded_models", entries.clone()),
        (
            "ImageParams",
            "post_processing",
            json!({"enum": POST_PROCESSORS}),
        ),
    ];
    for (schema, property, bounds) in items {
        merge(
            &mut schemas[schema]["properties"][property]["items"],
            bounds,
        );
    }
    // A worker serves at least one model: `models` may not be left to its default, `[]`.
    merge(
        &mut schemas["PopRequest"]["properties"]["models"],
        json!({"minItems": 1}),
    );
    schemas["PopRequest"]["required"] = json!(["name", "models"]);
    let alias = json!({"pattern": ALIAS_ID_PATTERN});
    merge(
        &mut schemas["KudosTransferRequest"]["properties"]["username"],
        alias.clone(),
    );
    merge(
        &mut schemas["PopRequest"]["properties"]["priority_usernames"]["items"],
        alias,
    );
    for property in ["value", "ref"] {
        merge(
            &mut schemas["GenMetadata"]["properties"][property],
            entries.clone(),
        );
    }
    if let Some(variants) = schemas["SeedInput"]["oneOf"].as_array_mut() {
        for variant in variants.iter_mut().filter(|v| v["type"] == "string") {
            merge(variant, json!({"maxLength": MAX_SEED_CHARS}));
        }
    }
}

/// The text wire types' bounds on list entries, named by constants in `horde_api::text`.
fn text_bounds(schemas: &mut Value) {
    let name = json!({"minLength": 1, "maxLength": MAX_NAME_CHARS});
    let lists = [
        ("TextRequest", "models", MAX_TEXT_MODELS, name.clone()),
        ("TextRequest", "workers", MAX_TEXT_WORKERS, name.clone()),
        ("TextPopRequest", "models", MAX_TEXT_MODELS, name),
        (
            "TextPopRequest",
            "softprompts",
            MAX_WORKER_SOFTPROMPTS,
            json!({"maxLength": MAX_SOFTPROMPT_CHARS}),
        ),
        (
            "TextPopRequest",
            "priority_usernames",
            MAX_POP_LIST,
            json!({"maxLength": MAX_LIST_ENTRY_CHARS, "pattern": ALIAS_ID_PATTERN}),
        ),
        (
            "TextPopRequest",
            "blacklist",
            MAX_POP_LIST,
            json!({"maxLength": MAX_LIST_ENTRY_CHARS}),
        ),
    ];
    for (schema, property, most, items) in lists {
        let list = &mut schemas[schema]["properties"][property];
        merge(list, json!({"maxItems": most}));
        merge(&mut list["items"], items);
    }
    // A text worker serves at least one model.
    merge(
        &mut schemas["TextPopRequest"]["properties"]["models"],
        json!({"minItems": 1}),
    );
    schemas["TextPopRequest"]["required"] = json!(["name", "models"]);
    // An alchemist runs at least one form; its priority users are aliases.
    let alchemist = &mut schemas["InterrogationPopRequest"]["properties"];
    merge(&mut alchemist["forms"], json!({"minItems": 1}));
    merge(
        &mut alchemist["forms"]["items"],
        json!({"minLength": 1, "maxLength": 30}),
    );
    merge(
        &mut alchemist["priority_usernames"],
        json!({"maxItems": MAX_POP_LIST}),
    );
    merge(
        &mut alchemist["priority_usernames"]["items"],
        json!({"maxLength": MAX_LIST_ENTRY_CHARS, "pattern": ALIAS_ID_PATTERN}),
    );
    schemas["InterrogationPopRequest"]["required"] = json!(["name", "forms"]);
    merge(
        &mut schemas["InterrogationRequest"]["properties"]["source_image"],
        json!({"minLength": 1}),
    );
}

/// `anyOf` one `required` per property: an object giving at least one of its fields a value
/// (a `null` is the same as an absent field).
fn at_least_one_field(schema: &mut Value) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let any_of: Vec<Value> = properties
        .keys()
        .map(|name| json!({"required": [name], "properties": {name: {"not": {"type": "null"}}}}))
        .collect();
    schema["anyOf"] = Value::Array(any_of);
}

/// Every string gets [`NO_NUL`] (beside its own pattern, if it has one, in an `allOf`). The
/// names of unknown properties need no rule: such a property is ignored, NUL and all.
fn forbid_nul(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string {
                match map.get("pattern") {
                    None => {
                        map.insert("pattern".into(), NO_NUL.into());
                    }
                    Some(own) if own != NO_NUL => {
                        map.insert("allOf".into(), json!([{"pattern": NO_NUL}]));
                    }
                    Some(_) => {}
                }
            }
            for (key, child) in map.iter_mut() {
                // `properties` maps names to schemas: recurse into the schemas, not the map.
                if key == "properties" {
                    if let Value::Object(properties) = child {
                        properties.values_mut().for_each(forbid_nul);
                    }
                } else if !NOT_SCHEMAS.contains(&key.as_str()) {
                    forbid_nul(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_nul),
        _ => {}
    }
}

/// utoipa writes a `u32` as `format: int32, minimum: 0` and a `u64` as `int64`: a reader takes
/// the format's signed maximum, below what the server accepts. Such a schema gets its real
/// maximum instead of the format.
fn unsigned_ranges(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(Value::as_f64) == Some(0.0)
                && !map.contains_key("maximum");
            let maximum = match map.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(json!(u32::MAX)),
                Some("int64") if unsigned => Some(json!(u64::MAX)),
                _ => None,
            };
            if let Some(maximum) = maximum {
                map.remove("format");
                map.insert("maximum".into(), maximum);
            }
            map.values_mut().for_each(unsigned_ranges);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

/// Keys of a schema whose values are not schemas.
const NOT_SCHEMAS: &[&str] = &[
    "propertyNames",
    "enum",
    "required",
    "default",
    "example",
    "examples",
];

/// Adds `extra`'s keys to the schema `target` (an object).
fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(target), Value::Object(extra)) = (target, extra) {
        target.extend(extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document names a schema it defines (a client generator, or
    /// Schemathesis, fails on one that does not: `ModelState` was named by the model listings'
    /// query and missing).
    #[test]
    fn every_reference_resolves() {
        fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        found.push(target);
                    }
                    map.values().for_each(|v| references(v, found));
                }
                Value::Array(items) => items.iter().for_each(|v| references(v, found)),
                _ => {}
            }
        }
        let spec = document(1000, &["registered".into()]);
        let mut found = Vec::new();
        references(&spec, &mut found);
        assert!(found.len() > 50, "{} references", found.len());
        let missing: Vec<_> = found
            .iter()
            .filter(|target| spec.pointer(target.trim_start_matches('#')).is_none())
            .collect();
        assert!(missing.is_empty(), "unresolved references: {missing:?}");
    }

    #[test]
    fn bounds_named_by_constants_and_the_server_limit_are_in_the_spec() {
        let spec = document(1234, &["registered".into(), "gold".into()]);
        let schemas = &spec["components"]["schemas"];
        assert_eq!(
            schemas["ImageRequest"]["properties"]["prompt"]["maxLength"],
            1234
        );
        assert_eq!(
            schemas["ModifyUser"]["properties"]["tier"]["enum"],
            json!(["registered", "gold", null]),
            "the tiers this horde has"
        );
        assert_eq!(
            schemas["ImageRequest"]["properties"]["models"]["maxItems"],
            MAX_REQUEST_MODELS
        );
        assert_eq!(
            schemas["ImageParams"]["properties"]["post_processing"]["items"]["enum"]
                .as_array()
                .map(Vec::len),
            Some(POST_PROCESSORS.len())
        );
        let invited = &schemas["ModifyUser"]["properties"]["worker_invited"];
        assert_eq!(
            invited["maximum"],
            u32::MAX,
            "a u32 is not capped at i32's maximum"
        );
        assert!(invited.get("format").is_none(), "{invited}");
        assert_eq!(
            schemas["ModifyWorker"]["anyOf"].as_array().map(Vec::len),
            Some(7),
            "one alternative for each field of a worker's modification, `team` included"
        );
        assert_eq!(
            schemas["ImageParams"]["properties"]["special"]["$ref"],
            "#/components/schemas/JsonWithoutNul"
        );
        assert_eq!(
            schemas["PopRequest"]["properties"]["name"]["pattern"], NO_NUL,
            "a string without a pattern of its own gets the NUL rule"
        );
        assert_eq!(
            schemas["ImageRequest"]["properties"]["webhook"]["allOf"][0]["pattern"], NO_NUL,
            "one with a pattern gets it beside"
        );
    }
}
