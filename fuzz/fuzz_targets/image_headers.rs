//! Images as the coordinator checks them: a worker's result (`verify_image`: header size
//! against the job's sizes, then a decode within limits) and a request's source image
//! (`check_source_image`: header only, base64 or raw). Nothing may panic or allocate for a
//! size the header did not pass.
#![no_main]

use base64::Engine;
use horde_core::request_rules::check_source_image;
use horde_server::images::verify_image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verify_image(data, &[(64, 64), (256, 256)]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = check_source_image("source_image", &encoded);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check_source_image("source_mask", text);
    }
});
