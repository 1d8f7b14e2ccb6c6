//! The profanity check of public text: worker names, bridge agents and worker infos, which
//! anyone can read on `/workers` and the dashboard (the public horde refuses profanity there
//! with `ProfaneWorkerName`, `ProfaneBridgeAgent` and `ProfaneWorkerInfo`).
//!
//! The public horde asks a classifier (`alt-profanity-check`); here `rustrict`'s word model,
//! which also catches spaced-out and look-alike letters and knows the usual false positives
//! (Scunthorpe, "assess", …). Profane, offensive and sexual text of moderate severity or worse
//! is refused; mild language passes. Digits are read as separators, not as letters: rustrict
//! reads `1` as `i` and `3` as `e`, which turns the numbered names workers commonly have
//! (`w14-3558-7`) into words.

use rustrict::{CensorStr, Type};

/// Names of the horde's own software that the word model misreads (it finds a slur inside
/// "koboldcpp"): the bridge agents of the public horde's text workers carry them, so they are
/// set aside before the check, lowercase.
const SOFTWARE_NAMES: &[&str] = &["koboldcpp", "koboldai", "kobold"];

/// Whether `text` may not be shown publicly.
pub fn is_profane(text: &str) -> bool {
    let mut lowered = text.to_lowercase();
    for name in SOFTWARE_NAMES {
        lowered = lowered.replace(name, " ");
    }
    let letters: String = lowered
        .chars()
        .map(|c| if c.is_ascii_digit() { ' ' } else { c })
        .collect();
    letters.is((Type::PROFANE | Type::OFFENSIVE | Type::SEXUAL) & Type::MODERATE_OR_HIGHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profane_names_are_caught_even_disguised() {
        for text in [
            "fucking worker",
            "this shit is fast",
            "sh1tty w0rker",
            "f u c k",
            // Setting the software names aside does not hide what is around them.
            "koboldcpp fucking worker",
            "KoboldCpp-shit",
        ] {
            assert!(is_profane(text), "{text:?} passed");
        }
    }

    #[test]
    fn ordinary_worker_names_and_infos_pass() {
        for text in [
            "my-worker",
            "RTX 4090 in Scunthorpe",
            "AI Horde Worker reGen:9.0.1:https://github.com/Haidra-Org/horde-worker-reGen",
            "assessing class passes",
            "sdk-endpoints-normal",
            "w14-3558-7",
            "w199-99-12",
            "gpu-box-3090",
            // The bridge agents of the public horde's text workers.
            "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp",
            "KoboldAI Client",
            "AI Horde Worker~aphrodite~oai:2.3.0:https://github.com/Haidra-Org/AI-Horde-Worker",
            "TabbyAPI",
        ] {
            assert!(!is_profane(text), "{text:?} refused");
        }
        // The names `horde bench` gives its workers.
        for n in 0..2000 {
            let name = format!("w{n}-3558-7");
            assert!(!is_profane(&name), "{name:?} refused");
        }
    }
}
