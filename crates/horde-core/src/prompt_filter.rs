//! The public horde's regex prompt filters: moderators store regexes by type, and every image
//! prompt is screened against them before it is queued.
//!
//! How a prompt is judged (horde-api.md §9):
//! * only the positive part (before `###`) is screened, after normalisation that undoes the
//!   usual evasions: `(word:1.2)` weights dropped, punctuation made spaces, s p a c e d letters
//!   joined, whitespace collapsed, accents and other scripts transliterated to ASCII;
//! * group 1 is types 10 and 11 (type 10 also matches child emojis), group 2 is type 20; a match
//!   in a group adds one suspicion, and **suspicion 2 blocks** the prompt;
//! * a blocked prompt is rewritten when the requester allows it (`replacement_filter`, default
//!   on): type-10 filters' replacements applied, and words that steer away from minors put first
//!   in the negative prompt. If nothing is left, or rewriting is off, the request is refused;
//! * prompts for NSFW models are rewritten whenever they match an age word or a type-10 filter.
//!
//! The other types (12..19, 21..29) are stored and listed but take no part in screening, as on
//! the public horde. Regexes use Rust's `regex` syntax (no look-around), case-insensitive.

use regex::{Regex, RegexBuilder};

/// The filter types that take part in screening.
pub const SCREENING_TYPES: [i32; 3] = [10, 11, 20];
/// The range of types a filter may have.
pub const FILTER_TYPES: std::ops::RangeInclusive<i32> = 10..=29;
/// Suspicion at which a prompt is blocked.
pub const BLOCKING_SUSPICION: u32 = 2;
/// Longest positive prompt (characters) that is rewritten instead of refused.
pub const MAX_REWRITE_CHARS: usize = 7000;
/// What a rewritten prompt's negative part starts with.
pub const FORCED_NEGATIVE: &str = "child, infant, underage, immature, teenager, tween";

const CHILD_EMOJIS: &[&str] = &[
    "👧", "👦", "👶", "👪", "🤱", "🍼", "👼", "🐤", "🐥", "🚼", "🚸",
];

/// One stored filter.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFilter {
    pub id: String,
    pub regex: String,
    pub filter_type: i32,
    pub description: String,
    pub replacement: String,
    /// The moderator who added or last changed it.
    pub user_id: i64,
}

/// Compiles one filter's regex the way screening uses it, or says why it cannot.
pub fn compile(regex: &str) -> Result<Regex, String> {
    RegexBuilder::new(regex)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("Invalid regex: {e}"))
}

/// The outcome of screening one prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Queue it as sent.
    Clean,
    /// Queue this prompt instead.
    Rewritten(String),
    /// Refuse it (400 CorruptPrompt); the matches say why.
    Blocked(Vec<String>),
}

/// All stored filters, compiled for screening.
#[derive(Debug, Default)]
pub struct FilterSet {
    /// Per screening type, the type's regexes joined into one alternation.
    combined: Vec<(i32, Regex)>,
    /// Type-10 filters with their replacements, applied in turn when rewriting.
    replacements: Vec<(Regex, String)>,
    age_words: Vec<(Regex, &'static str)>,
}

impl FilterSet {
    /// Compiles `filters`; a regex that does not compile (stored before a syntax change) is
    /// left out rather than taking screening down.
    pub fn new(filters: &[PromptFilter]) -> FilterSet {
        let combined = SCREENING_TYPES
            .iter()
            .filter_map(|&t| {
                let parts: Vec<String> = filters
                    .iter()
                    .filter(|f| f.filter_type == t && compile(&f.regex).is_ok())
                    .map(|f| format!("(?:{})", f.regex))
                    .collect();
                (!parts.is_empty())
                    .then(|| compile(&parts.join("|")).ok().map(|r| (t, r)))
                    .flatten()
            })
            .collect();
        let replacements = filters
            .iter()
            .filter(|f| f.filter_type == 10)
            .filter_map(|f| compile(&f.regex).ok().map(|r| (r, f.replacement.clone())))
            .collect();
        let age = |pattern: &str, with: &'static str| (compile(pattern).expect("valid"), with);
        FilterSet {
            combined,
            replacements,
            age_words: vec![
                age(
                    r"student|\byoung\b|lit[tl]?le|\blil\b|small?\b|\btiny",
                    "adult",
                ),
                age(r"girl|nina", "adult woman"),
                age(r"\bboys?\b|\bsons?\b", "adult man"),
            ],
        }
    }

    /// The combined regex of each screening type that has filters (`GET /filters/regex`).
    pub fn combined_regexes(&self) -> Vec<(i32, String)> {
        self.combined
            .iter()
            .map(|(t, r)| (*t, r.as_str().to_string()))
            .collect()
    }

    /// The suspicion of `prompt` (0, 1 or 2) and what matched; `only` limits it to one type.
    pub fn suspicion(&self, prompt: &str, only: Option<i32>) -> (u32, Vec<String>) {
        let positive = positive_part(prompt);
        let normalised = normalise(positive);
        let mut suspicion = 0;
        let mut matches = vec![];
        for group in [&[10, 11][..], &[20][..]] {
            for &filter_type in group {
                if only.is_some_and(|o| o != filter_type) {
                    continue;
                }
                let mut found = vec![];
                if filter_type == 10 {
                    found.extend(
                        CHILD_EMOJIS
                            .iter()
                            .filter(|e| positive.contains(*e))
                            .map(|e| e.to_string()),
                    );
                }
                if let Some((_, regex)) = self.combined.iter().find(|(t, _)| *t == filter_type) {
                    found.extend(regex.find(&normalised).map(|m| m.as_str().to_string()));
                }
                if !found.is_empty() {
                    suspicion += 1;
                    matches.extend(found);
                    break;
                }
            }
        }
        (suspicion, matches)
    }

    /// Judges an image prompt. `rewrite_allowed` is the request's `replacement_filter` (or the
    /// requester's education role); `nsfw_model` whether any requested model is NSFW.
    pub fn screen(&self, prompt: &str, rewrite_allowed: bool, nsfw_model: bool) -> Verdict {
        let (suspicion, matches) = self.suspicion(prompt, None);
        let rewritable = positive_part(prompt).chars().count() <= MAX_REWRITE_CHARS;
        let mut rewritten = None;
        if suspicion >= BLOCKING_SUSPICION {
            if !(rewrite_allowed && rewritable) {
                return Verdict::Blocked(matches);
            }
            match self.replace(prompt) {
                Some(p) => rewritten = Some(p),
                None => return Verdict::Blocked(matches),
            }
        }
        if nsfw_model {
            let current = rewritten.as_deref().unwrap_or(prompt);
            if self.needs_nsfw_rewrite(current) {
                let base = match rewritten {
                    Some(p) => p,
                    None => match self.replace(current) {
                        Some(p) => p,
                        None => return Verdict::Blocked(matches),
                    },
                };
                return match self.replace_age_words(&base) {
                    Some(p) => Verdict::Rewritten(p),
                    None => Verdict::Blocked(matches),
                };
            }
        }
        rewritten.map_or(Verdict::Clean, Verdict::Rewritten)
    }

    /// The prompt normalised, type-10 replacements applied, and the forced words first in the
    /// negative prompt; `None` when nothing of the positive prompt is left.
    pub fn replace(&self, prompt: &str) -> Option<String> {
        let (positive, negative) = split(prompt);
        let mut positive = normalise(positive);
        for (regex, with) in &self.replacements {
            positive = regex.replace_all(&positive, with.as_str()).into_owned();
        }
        if positive.trim().is_empty() {
            return None;
        }
        let negative = negative.map_or(String::new(), |n| format!(", {n}"));
        Some(format!("{positive}###{FORCED_NEGATIVE}{negative}"))
    }

    fn needs_nsfw_rewrite(&self, prompt: &str) -> bool {
        let normalised = normalise(positive_part(prompt));
        self.age_words.iter().any(|(r, _)| r.is_match(&normalised))
            || self.suspicion(prompt, Some(10)).0 > 0
    }

    fn replace_age_words(&self, prompt: &str) -> Option<String> {
        let (positive, negative) = split(prompt);
        let mut positive = positive.to_string();
        for (regex, with) in &self.age_words {
            positive = regex.replace_all(&positive, *with).into_owned();
        }
        if positive.trim().is_empty() {
            return None;
        }
        Some(match negative {
            Some(n) => format!("{positive}###{n}"),
            None => positive,
        })
    }
}

fn split(prompt: &str) -> (&str, Option<&str>) {
    match prompt.split_once("###") {
        Some((p, n)) => (p, Some(n)),
        None => (prompt, None),
    }
}

fn positive_part(prompt: &str) -> &str {
    split(prompt).0
}

/// Undoes the usual ways around a word filter: prompt weights, punctuation, spaced-out letters,
/// repeated whitespace and non-ASCII look-alikes.
pub fn normalise(prompt: &str) -> String {
    static WEIGHT: std::sync::LazyLock<Regex> =
        std::sync::LazyLock::new(|| Regex::new(r"\((.*?):\d+\.\d+\)").expect("valid"));
    let unweighted = WEIGHT.replace_all(prompt, "$1");
    let spaced: String = unweighted
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    let joined = join_spaced_letters(&spaced);
    let collapsed = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    deunicode::deunicode(&collapsed)
}

/// Joins runs of three or more single letters, each after whitespace ("a k i d" → "a kid"; a
/// letter that starts the text has no whitespace before it and is not joined).
fn join_spaced_letters(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<String> = vec![];
    let mut run: Vec<&str> = vec![];
    let single = |w: &str| w.chars().count() == 1;
    let starts_text = !text.starts_with(char::is_whitespace);
    for (i, word) in words.iter().copied().chain(std::iter::once("")).enumerate() {
        if i == 0 && starts_text {
            out.push(word.to_string());
            continue;
        }
        if !word.is_empty() && single(word) {
            run.push(word);
            continue;
        }
        if run.len() >= 3 {
            out.push(run.concat());
        } else {
            out.extend(run.iter().map(|w| w.to_string()));
        }
        run.clear();
        if !word.is_empty() {
            out.push(word.to_string());
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(filter_type: i32, regex: &str, replacement: &str) -> PromptFilter {
        PromptFilter {
            id: format!("{filter_type}-{regex}"),
            regex: regex.into(),
            filter_type,
            description: String::new(),
            replacement: replacement.into(),
            user_id: 1,
        }
    }

    fn set() -> FilterSet {
        FilterSet::new(&[
            filter(10, r"\bkid\b", "person"),
            filter(11, r"\bschool\b", ""),
            filter(20, r"\bexplicit\b", ""),
            filter(15, r"\blighthouse\b", ""),
        ])
    }

    #[test]
    fn normalisation_undoes_weights_punctuation_spacing_and_accents() {
        assert_eq!(normalise("(kid:1.3), at the-beach"), "kid at the beach");
        assert_eq!(normalise("a  k i d   on a bike"), "a kid on a bike");
        assert_eq!(normalise("kíd"), "kid");
        assert_eq!(
            normalise("a b c"),
            "a b c",
            "the first letter has no space before it"
        );
        assert_eq!(normalise("x a b c"), "x abc");
        assert_eq!(normalise("a b"), "a b", "two letters are left alone");
    }

    #[test]
    fn one_match_per_group_and_two_groups_block() {
        let s = set();
        assert_eq!(s.suspicion("a lighthouse at dusk", None), (0, vec![]));
        assert_eq!(s.suspicion("a kid at school", None).0, 1, "one per group");
        let (suspicion, matches) = s.suspicion("an (explicit:1.2) k i d", None);
        assert_eq!(suspicion, 2);
        assert_eq!(matches, vec!["kid".to_string(), "explicit".to_string()]);
        assert_eq!(
            s.suspicion("explicit ### kid", None).0,
            1,
            "the negative prompt is not screened"
        );
        assert_eq!(s.suspicion("explicit 👶", None).0, 2, "child emojis count");
        assert_eq!(s.suspicion("an explicit kid", Some(20)).0, 1);
    }

    #[test]
    fn blocked_prompts_are_rewritten_when_allowed() {
        let s = set();
        assert_eq!(
            s.screen("an explicit lighthouse", true, false),
            Verdict::Clean
        );
        assert_eq!(
            s.screen("an explicit kid ### blurry", true, false),
            Verdict::Rewritten(format!("an explicit person###{FORCED_NEGATIVE},  blurry"))
        );
        assert!(matches!(
            s.screen("an explicit kid", false, false),
            Verdict::Blocked(m) if m.len() == 2
        ));
        let eaten = FilterSet::new(&[filter(10, ".+", ""), filter(20, "x", "")]);
        assert!(matches!(
            eaten.screen("x marks the spot", true, false),
            Verdict::Blocked(_)
        ));
        let long = format!("explicit kid {}", "a ".repeat(MAX_REWRITE_CHARS));
        assert!(matches!(s.screen(&long, true, false), Verdict::Blocked(_)));
    }

    #[test]
    fn nsfw_models_get_age_words_rewritten() {
        let s = set();
        assert_eq!(
            s.screen("a young girl ### ugly", true, true),
            Verdict::Rewritten(format!("a adult adult woman###{FORCED_NEGATIVE},  ugly"))
        );
        assert_eq!(s.screen("a young girl", true, false), Verdict::Clean);
        assert_eq!(s.screen("a lighthouse", true, true), Verdict::Clean);
    }

    #[test]
    fn only_screening_types_are_combined_and_bad_regexes_are_left_out() {
        let s = FilterSet::new(&[
            filter(10, "a", ""),
            filter(10, "b", ""),
            filter(11, "(", ""),
            filter(15, "c", ""),
        ]);
        assert_eq!(s.combined_regexes(), vec![(10, "(?:a)|(?:b)".to_string())]);
        assert!(compile("(").unwrap_err().contains("Invalid regex"));
    }
}
