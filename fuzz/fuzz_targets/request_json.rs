//! Bodies as the coordinator's extractor reads them (`horde_server::extract::parse_json`, the
//! one every JSON endpoint uses), then each body's bounds (`validate`): image requests, pops,
//! submits. Nothing may panic, and whatever parses must survive the validation.
#![no_main]

use horde_api::image::{ImageRequest, PopRequest, SubmitRequest};
use horde_server::extract::parse_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_json::<ImageRequest>(data) {
        let _ = request.validate();
        let _ = request.params.cfg_scale_has_two_decimals_at_most();
        let _ = request.params.accurate_steps();
    }
    if let Ok(pop) = parse_json::<PopRequest>(data) {
        let _ = pop.validate();
    }
    if let Ok(submit) = parse_json::<SubmitRequest>(data) {
        let _ = submit.validate();
    }
    if let Ok(path) = std::str::from_utf8(data) {
        let key = horde_core::ratelimit::route_key("/api/v2/generate/status/{id}", path);
        assert!(key.len() <= 200, "a rate-limit key of {} bytes", key.len());
    }
});
