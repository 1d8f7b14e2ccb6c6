use super::*;
use crate::accounts::ANONYMOUS_USER_ID;

fn reference() -> TextModelReference {
    TextModelReference::parse(
        r#"{"koboldcpp/small": {"parameters": 3000000000},
            "koboldcpp/big": {"parameters": 70000000000}}"#,
    )
    .unwrap()
}

fn request(prompt: &str) -> TextRequest {
    let mut body = TextRequest::new(prompt);
    body.models = vec!["koboldcpp/small".into()];
    body
}

fn user(trusted: bool) -> User {
    User {
        id: 7,
        trusted,
        ..User::default()
    }
}

fn checked(body: &TextRequest) -> Result<(), TextRefusal> {
    check(
        body,
        &user(false),
        &TextLimits::default(),
        &reference(),
        &WebhookPolicy::default(),
    )
}

fn rc_of(body: &TextRequest) -> &'static str {
    checked(body).unwrap_err().rc().as_str()
}

#[test]
fn a_plain_request_passes() {
    checked(&request("Once upon a time")).unwrap();
}

#[test]
fn each_public_rule_refuses_with_its_rc() {
    let mut body = request("   ");
    assert_eq!(rc_of(&body), "MissingPrompt");
    body = request("p");
    body.extra_source_images = vec![serde_json::json!({"image": "x"})];
    assert_eq!(rc_of(&body), "InvalidExtraSourceImages");
    body = request("p");
    body.params.max_length = 512;
    body.params.max_context_length = 256;
    assert_eq!(rc_of(&body), "TokenOverflow");
    body.params.max_context_length = 520;
    checked(&body).expect("a context that holds the tokens and the prompt");
    body.params.max_context_length = 512;
    assert_eq!(
        checked(&body),
        Err(TextRefusal::PromptOverContext {
            chars: 1,
            room_tokens: 0
        }),
        "the public rule lets max_length equal the context; the prompt then has no room"
    );
    body = request("p");
    body.params.sampler_order = Some(vec![6, 0, 1, 3, 4, 2]);
    assert_eq!(rc_of(&body), "MissingFullSamplerOrder");
    body.params.sampler_order = Some(vec![6, 0, 1, 3, 4, 2, 2]);
    assert_eq!(
        rc_of(&body),
        "MissingFullSamplerOrder",
        "a repeat is no 7th"
    );
    body.params.sampler_order = Some(vec![6, 0, 1, 3, 4, 2, 5]);
    checked(&body).unwrap();
    // An empty order is no custom order (falsy in the public horde's Python check).
    body.params.sampler_order = Some(vec![]);
    checked(&body).unwrap();
}

#[test]
fn stop_sequences_are_counted_and_measured_once_each() {
    let mut body = request("p");
    body.params.stop_sequence = Some((0..129).map(|i| format!("s{i}")).collect());
    assert_eq!(rc_of(&body), "TooManyStopSequences");
    // Repeats count once, as the public horde counts a set.
    body.params.stop_sequence = Some(vec!["same".into(); 500]);
    checked(&body).unwrap();
    body.params.stop_sequence = Some(vec!["a".repeat(1000), "b".repeat(1001)]);
    assert_eq!(
        checked(&body),
        Err(TextRefusal::ExcessiveStopSequence { chars: 2001 })
    );
    body.params.stop_sequence = Some(vec!["a".repeat(1000), "b".repeat(1000)]);
    checked(&body).unwrap();
}

#[test]
fn a_prompt_that_cannot_fit_the_context_left_is_refused() {
    let mut body = request("p");
    body.params.max_context_length = 1024;
    body.params.max_length = 512;
    // 512 tokens of room hold at most 8 × 512 characters.
    body.prompt = "a".repeat(8 * 512);
    checked(&body).unwrap();
    body.prompt.push('a');
    let refusal = checked(&body).unwrap_err();
    assert_eq!(
        refusal,
        TextRefusal::PromptOverContext {
            chars: 4097,
            room_tokens: 512
        }
    );
    assert_eq!(refusal.rc().as_str(), "TokenOverflow");
}

#[test]
fn the_operators_limits_and_unknown_models_are_refused() {
    let limits = TextLimits {
        max_length: 512,
        max_context_length: 8192,
        max_prompt_chars: 100,
        known_models_only: true,
    };
    let run = |body: &TextRequest, limits: &TextLimits| {
        check(
            body,
            &user(false),
            limits,
            &reference(),
            &WebhookPolicy::default(),
        )
    };
    let mut body = request("p");
    body.params.max_length = 513;
    let refusal = run(&body, &limits).unwrap_err();
    assert_eq!(
        refusal,
        TextRefusal::OverHordeLimit {
            field: "max_length",
            value: 513,
            max: 512
        }
    );
    assert_eq!(refusal.rc().as_str(), "BadRequest");
    body.params.max_length = 80;
    body.params.max_context_length = 8193;
    assert!(matches!(
        run(&body, &limits),
        Err(TextRefusal::OverHordeLimit {
            field: "max_context_length",
            ..
        })
    ));
    body.params.max_context_length = 2048;
    body.prompt = "a".repeat(101);
    assert_eq!(
        run(&body, &limits).unwrap_err().rc().as_str(),
        "InvalidPromptSize"
    );
    body.prompt = "p".into();
    body.models = vec!["koboldcpp/small".into(), "koboldcpp/nonesuch".into()];
    let refusal = run(&body, &limits).unwrap_err();
    assert_eq!(
        refusal,
        TextRefusal::UnknownModel("koboldcpp/nonesuch".into())
    );
    assert_eq!(refusal.rc().as_str(), "UnsupportedModel");
    let open = TextLimits {
        known_models_only: false,
        ..limits
    };
    run(&body, &open).expect("the public horde queues unknown models");
}

#[test]
fn unbatched_texts_need_trust_and_webhooks_are_checked() {
    let mut body = request("p");
    body.disable_batching = true;
    body.params.n = 2;
    assert_eq!(rc_of(&body), "RequiresTrust");
    check(
        &body,
        &user(true),
        &TextLimits::default(),
        &reference(),
        &WebhookPolicy::default(),
    )
    .unwrap();
    body.params.n = 1;
    checked(&body).expect("one text is never batched");
    body.webhook = Some("http://example.com/hook".into());
    assert!(matches!(checked(&body), Err(TextRefusal::Webhook(_))));
}

#[test]
fn a_softprompt_must_be_offered_by_a_worker_matched_as_the_public_horde_does() {
    let offered = ["fantasy_v2.zip", "scifi.zip"];
    let mut body = request("p");
    check_softprompt(&body, offered).unwrap();
    body.softprompt = Some(String::new());
    check_softprompt(&body, []).expect("an empty softprompt is no softprompt");
    body.softprompt = Some("fantasy".into());
    check_softprompt(&body, offered).expect("a name contained in an offered one");
    body.softprompt = Some("horror".into());
    let refusal = check_softprompt(&body, offered).unwrap_err();
    assert_eq!(refusal, TextRefusal::UnknownSoftprompt("horror".into()));
    assert!(refusal.message().contains("horror"));
}

#[test]
fn normalising_keeps_five_named_workers() {
    let mut body = request("p");
    body.workers = (0..8).map(|i| format!("w{i}")).collect();
    normalise(&mut body);
    assert_eq!(body.workers, ["w0", "w1", "w2", "w3", "w4"]);
}

#[test]
fn the_free_tokens_shrink_as_the_queue_grows_between_256_and_512() {
    let at = |threads, queued| {
        free_tokens(&TextCapacity {
            text_threads: threads,
            queued_text_requests: queued,
        })
    };
    assert_eq!(at(0, 0), 512);
    assert_eq!(at(10, 100), 512 + 50 - 90);
    assert_eq!(at(0, 100), 512 - 90);
    assert_eq!(at(0, 1000), 256);
    assert_eq!(at(100, 0), 512);
}

#[test]
fn upfront_kudos_come_from_the_biggest_model_or_20_a_text() {
    let reference = reference();
    let mut body = request("p");
    body.params.max_length = 210;
    body.params.n = 2;
    // 210 × 3 / 21 = 30 a text.
    assert_eq!(upfront_kudos(&body, &reference), 60.0);
    body.models.push("koboldcpp/big".into());
    // 210 × 70 / 21 = 700 a text.
    assert_eq!(upfront_kudos(&body, &reference), 1400.0);
    body.models.clear();
    assert_eq!(upfront_kudos(&body, &reference), 40.0);
}

#[test]
fn anonymous_requests_over_the_free_tokens_are_refused_or_downgraded() {
    let reference = reference();
    let anonymous = User {
        id: ANONYMOUS_USER_ID,
        kudos: -50.0,
        ..User::default()
    };
    let busy = TextCapacity {
        text_threads: 0,
        queued_text_requests: 200,
    };
    assert_eq!(free_tokens(&busy), 332);
    let mut body = request("p");
    body.params.max_length = 400;
    body.params.max_context_length = 4096;
    let refusal = apply_upfront(&mut body, anonymous.kudos, &busy, &reference).unwrap_err();
    assert_eq!(
        refusal,
        TextRefusal::KudosUpfront {
            required: 57.14,
            free_tokens: 332
        }
    );
    assert_eq!(refusal.rc().as_str(), "KudosUpfront");
    assert!(refusal.message().contains("over 332 tokens"));
    // Within the free tokens it is queued whoever asks.
    body.params.max_length = 332;
    apply_upfront(&mut body, anonymous.kudos, &busy, &reference).unwrap();
    // Fast workers only always needs the kudos.
    body.slow_workers = false;
    assert!(apply_upfront(&mut body, anonymous.kudos, &busy, &reference).is_err());
    // With allow_downgrade it is shrunk instead, and then needs nothing upfront.
    body.params.max_length = 400;
    body.allow_downgrade = true;
    apply_upfront(&mut body, anonymous.kudos, &busy, &reference).unwrap();
    assert_eq!(body.params.max_length, 332);
    assert!(body.slow_workers);
    assert!(!needs_upfront(&body, &busy));
    // A requester holding the kudos keeps the request as asked.
    let mut rich = request("p");
    rich.params.max_length = 400;
    apply_upfront(&mut rich, 57.14, &busy, &reference).unwrap();
    assert_eq!(rich.params.max_length, 400);
}

#[test]
fn a_request_is_priced_by_its_first_model() {
    let reference = reference();
    let mut body = request("p");
    body.params.max_length = 80;
    body.params.max_context_length = 2048;
    // 80 × 3 × 3.4 / 100.
    assert_eq!(job_kudos(&body, &reference), 8.16);
    body.models = vec![];
    // As 13B: 80 × 13 × 3.4 / 100.
    assert_eq!(job_kudos(&body, &reference), 35.36);
    body.models = vec!["unknown".into()];
    // An unknown model is multiplier 1: 80 × 3.4 / 100.
    assert_eq!(job_kudos(&body, &reference), 2.72);
}
