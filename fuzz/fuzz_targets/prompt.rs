//! The prompt as the engine reads it: the `###` split into positive and negative, then
//! A1111 attention syntax (`(word:1.3)`, `[word]`, escapes, unbalanced brackets) into weighted
//! runs, and the moderators' filter normalisation. Nothing may panic, and no text may be lost
//! or invented: the runs hold every character that is not syntax.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let request = horde_api::image::ImageRequest::new(text);
    let (positive, negative) = request.prompt_parts();
    for part in [Some(positive), negative].into_iter().flatten() {
        let fragments = horde_diffusion::prompt::parse(part);
        let kept: usize = fragments.iter().map(|f| f.text.len()).sum();
        assert!(kept <= part.len(), "{part:?} grew into {fragments:?}");
    }
    let _ = horde_core::prompt_filter::normalise(text);
});
