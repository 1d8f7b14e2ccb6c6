//! The fuzzers' corpus (`fuzz/corpus/`, kept in the repository) replayed on the stable
//! toolchain, so every input the fuzzers ever kept (the seeds, the inputs that reached new
//! code, and any crash found and fixed) runs in CI through the same functions as the targets in
//! `fuzz/fuzz_targets/`: the prompt parser, request JSON through the real extractor, and the
//! image header checks. The fuzzing itself needs nightly (docs/security.md).

use base64::Engine;
use horde_api::image::{ImageRequest, PopRequest, SubmitRequest};
use horde_core::request_rules::check_source_image;
use horde_server::extract::parse_json;
use horde_server::images::verify_image;

/// Every file of `fuzz/corpus/<target>`; at least the seeds must be there.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{target}: only {} inputs", files.len());
    files
}

#[test]
fn the_prompt_corpus_parses_without_losing_or_inventing_text() {
    for (name, data) in corpus("prompt") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let request = ImageRequest::new(text);
        let (positive, negative) = request.prompt_parts();
        for part in [Some(positive), negative].into_iter().flatten() {
            let fragments = horde_diffusion::prompt::parse(part);
            let kept: usize = fragments.iter().map(|f| f.text.len()).sum();
            assert!(
                kept <= part.len(),
                "{name}: {part:?} grew into {fragments:?}"
            );
        }
        let _ = horde_core::prompt_filter::normalise(text);
    }
}

#[test]
fn the_request_json_corpus_goes_through_the_extractor_and_the_bounds() {
    let mut parsed = 0;
    for (name, data) in corpus("request_json") {
        if let Ok(request) = parse_json::<ImageRequest>(&data) {
            let _ = request.validate();
            let _ = request.params.cfg_scale_has_two_decimals_at_most();
            parsed += 1;
        }
        if let Ok(pop) = parse_json::<PopRequest>(&data) {
            let _ = pop.validate();
        }
        if let Ok(submit) = parse_json::<SubmitRequest>(&data) {
            let _ = submit.validate();
        }
        if let Ok(path) = std::str::from_utf8(&data) {
            let key = horde_core::ratelimit::route_key("/api/v2/generate/status/{id}", path);
            assert!(key.len() <= 200, "{name}: a key of {} bytes", key.len());
        }
    }
    assert!(parsed >= 1, "the seeds include a valid image request");
}

#[test]
fn the_image_corpus_is_checked_from_headers_without_a_panic() {
    let mut accepted = 0;
    for (_, data) in corpus("image_headers") {
        if verify_image(&data, &[(64, 64), (256, 256)]).is_ok() {
            accepted += 1;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let _ = check_source_image("source_image", &encoded);
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = check_source_image("source_mask", text);
        }
    }
    assert!(accepted >= 2, "the 64×64 PNG and WebP seeds pass");
}
