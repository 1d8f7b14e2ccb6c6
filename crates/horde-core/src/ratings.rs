//! Requesters' ratings of images, as a signal in the worker's reputation.
//!
//! The public horde forwards `POST /generate/rate/{id}` to a ratings site and keeps nothing. We
//! keep the ratings and let them move a worker's reliability (what routing prefers) beside what
//! it completed, how fast and how suspect it is:
//!
//! * **one voice per requester and worker**: each requester's ratings of a worker count as
//!   their mean, so rating one worker a hundred times weighs what rating it once does (and
//!   every anonymous requester is one requester). A request is rated once
//!   (`AestheticsAlreadyExist`), so one request cannot be rated twice either;
//! * **shrunk toward neutral**: the voices are averaged with [`PRIOR_RATERS`] neutral ones, so a
//!   few raters move a worker a little and many move it further;
//! * **a stated weight**: the signal, in −1 (every voice 1) to 1 (every voice 10), moves
//!   reliability toward 1 or toward 0 by at most [`RATING_WEIGHT`] of the way. Completion keeps
//!   the larger say: no rating lifts a worker that drops its jobs above one that finishes them.
//!
//! `artifacts` (0..5) is stored with each rating but judges nothing yet.

use horde_api::Rc;
use serde::{Deserialize, Serialize};

/// The most a full, unanimous signal moves reliability: this share of the distance to 1 (or 0).
pub const RATING_WEIGHT: f64 = 0.25;
/// Neutral voices every worker's ratings are averaged with.
pub const PRIOR_RATERS: f64 = 5.0;
/// `rating` (the public horde's bounds, 1..10) and its neutral middle.
pub const MIN_RATING: u8 = 1;
pub const MAX_RATING: u8 = 10;
pub const NEUTRAL_RATING: f64 = 5.5;
/// `artifacts` (the public horde's bounds, 0..5).
pub const MAX_ARTIFACTS: u8 = 5;

/// A worker's ratings, one voice per requester: how many requesters rated it and the sum of
/// each one's mean rating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RatingSummary {
    pub raters: u32,
    pub points: f64,
}

impl RatingSummary {
    /// The summary of these requesters' means (one per requester).
    pub fn from_rater_means(means: impl IntoIterator<Item = f64>) -> RatingSummary {
        means
            .into_iter()
            .fold(RatingSummary::default(), |s, mean| RatingSummary {
                raters: s.raters + 1,
                points: s.points + mean.clamp(f64::from(MIN_RATING), f64::from(MAX_RATING)),
            })
    }

    /// The mean of the requesters' means, `None` before anyone rated.
    pub fn mean(&self) -> Option<f64> {
        (self.raters > 0).then(|| self.points / f64::from(self.raters))
    }

    /// −1 to 1: the voices' distance from neutral, averaged with [`PRIOR_RATERS`] neutral ones.
    pub fn signal(&self) -> f64 {
        let half_range = (f64::from(MAX_RATING) - f64::from(MIN_RATING)) / 2.0;
        let lean = (self.points - NEUTRAL_RATING * f64::from(self.raters)) / half_range;
        (lean / (f64::from(self.raters) + PRIOR_RATERS)).clamp(-1.0, 1.0)
    }
}

/// `reliability` moved by the ratings: toward 1 by `RATING_WEIGHT × signal` of the distance
/// when they are good, toward 0 by as much when they are bad; unchanged before any rating.
pub fn rated_reliability(reliability: f64, summary: &RatingSummary) -> f64 {
    let pull = RATING_WEIGHT * summary.signal();
    if pull >= 0.0 {
        reliability + pull * (1.0 - reliability)
    } else {
        reliability + pull * reliability
    }
}

/// Why a rating is refused (the public horde's `rc`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RatingRefusal {
    NotCompleted,
    NotShared,
    /// An image id that is not a finished image of this request.
    UnknownImage(String),
    Duplicate,
    Missing,
    /// Only `best`, and the request has one image.
    Solo,
    AlreadyRated,
}

impl crate::Refusal for RatingRefusal {
    fn rc(&self) -> Rc {
        match self {
            RatingRefusal::NotCompleted => Rc::AestheticsNotCompleted,
            RatingRefusal::NotShared => Rc::AestheticsNotPublic,
            RatingRefusal::UnknownImage(_) => Rc::ProcGenNotFound,
            RatingRefusal::Duplicate => Rc::AestheticsDuplicate,
            RatingRefusal::Missing => Rc::AestheticsMissing,
            RatingRefusal::Solo => Rc::AestheticsSolo,
            RatingRefusal::AlreadyRated => Rc::AestheticsAlreadyExist,
        }
    }
    fn message(&self) -> String {
        match self {
            RatingRefusal::NotCompleted => {
                "You can only aesthetically rate completed requests!".into()
            }
            RatingRefusal::NotShared => {
                "You can only aesthetically rate requests you have opted to share publicly".into()
            }
            RatingRefusal::UnknownImage(id) => {
                format!("Image with ID '{id}' is not part of this request.")
            }
            RatingRefusal::Duplicate => "Duplicate image ID found in your ratings.".into(),
            RatingRefusal::Missing => {
                "You need to either point to the best image, or provide aesthetic ratings.".into()
            }
            RatingRefusal::Solo => {
                "You have pointed to a single image generation as being the best one of the set."
                    .into()
            }
            RatingRefusal::AlreadyRated => "This generation appears already rated".into(),
        }
    }
}

/// Checks a rating of a request whose finished images are `images` (ids): every rated id one
/// of them and rated once, something rated, and `best` alone only among several images.
pub fn check_rating(
    images: &[String],
    rated: &[&str],
    best: Option<&str>,
) -> Result<(), RatingRefusal> {
    let mut seen = std::collections::HashSet::new();
    for id in rated.iter().copied().chain(best) {
        if !images.iter().any(|i| i == id) {
            return Err(RatingRefusal::UnknownImage(id.to_string()));
        }
    }
    for id in rated {
        if !seen.insert(*id) {
            return Err(RatingRefusal::Duplicate);
        }
    }
    match (rated.is_empty(), best) {
        (true, None) => Err(RatingRefusal::Missing),
        (true, Some(_)) if images.len() <= 1 => Err(RatingRefusal::Solo),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rating_leaves_reliability_unchanged() {
        let none = RatingSummary::default();
        assert_eq!(none.signal(), 0.0);
        assert_eq!(none.mean(), None);
        assert_eq!(rated_reliability(0.8, &none), 0.8);
    }

    #[test]
    fn one_top_rating_moves_reliability_by_the_stated_weight() {
        let one = RatingSummary::from_rater_means([10.0]);
        // (10 − 5.5) / 4.5 = 1 over 1 + 5 voices.
        assert!((one.signal() - 1.0 / 6.0).abs() < 1e-12);
        let expected = 0.8 + RATING_WEIGHT / 6.0 * 0.2;
        assert!((rated_reliability(0.8, &one) - expected).abs() < 1e-12);
        let low = RatingSummary::from_rater_means([1.0]);
        let expected = 0.8 - RATING_WEIGHT / 6.0 * 0.8;
        assert!((rated_reliability(0.8, &low) - expected).abs() < 1e-12);
    }

    #[test]
    fn many_raters_weigh_more_than_few_and_never_past_the_weight() {
        let few = RatingSummary::from_rater_means([10.0; 2]);
        let many = RatingSummary::from_rater_means([10.0; 200]);
        assert!(many.signal() > few.signal());
        let lifted = rated_reliability(0.5, &many);
        assert!(lifted < 0.5 + RATING_WEIGHT * 0.5 + 1e-12);
        assert!(lifted > 0.6);
        let sunk = rated_reliability(0.5, &RatingSummary::from_rater_means([1.0; 200]));
        assert!(sunk > 0.5 - RATING_WEIGHT * 0.5 - 1e-12 && sunk < 0.4);
    }

    #[test]
    fn ratings_are_checked_as_the_public_horde_checks_them() {
        let images = vec!["a".to_string(), "b".to_string()];
        assert_eq!(check_rating(&images, &["a"], None), Ok(()));
        assert_eq!(check_rating(&images, &[], Some("b")), Ok(()));
        assert_eq!(
            check_rating(&images, &["c"], None),
            Err(RatingRefusal::UnknownImage("c".into()))
        );
        assert_eq!(
            check_rating(&images, &[], Some("c")),
            Err(RatingRefusal::UnknownImage("c".into()))
        );
        assert_eq!(
            check_rating(&images, &["a", "a"], None),
            Err(RatingRefusal::Duplicate)
        );
        assert_eq!(
            check_rating(&images, &[], None),
            Err(RatingRefusal::Missing)
        );
        assert_eq!(
            check_rating(&images[..1], &[], Some("a")),
            Err(RatingRefusal::Solo)
        );
        assert_eq!(check_rating(&images[..1], &["a"], Some("a")), Ok(()));
    }
}
