//! The profanity check of public text: worker names, bridge agents and worker infos, which
//! anyone can read on `/workers` and the dashboard (the public horde refuses profanity there
//! with `ProfaneWorkerName`, `ProfaneBridgeAgent` and `ProfaneWorkerInfo`).
//!
//! The public horde asks a classifier (`alt-profanity-check`); here `rustrict`'s word model,
//! which also catches spaced-out and look-alike spellings and knows the usual false positives
//! (Scunthorpe, "assess", …). Profane, offensive and sexual text of moderate severity or worse
//! is refused; mild language passes.

use rustrict::{CensorStr, Type};

/// Whether `text` may not be shown publicly.
pub fn is_profane(text: &str) -> bool {
    text.is((Type::PROFANE | Type::OFFENSIVE | Type::SEXUAL) & Type::MODERATE_OR_HIGHER)
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
        ] {
            assert!(!is_profane(text), "{text:?} refused");
        }
    }
}
