//! Shared keys: a user lends their account to others through a key with its own kudos budget,
//! expiry and size limits. Requests made with it are the owner's requests, paid from the
//! owner's balance, and each charge is also taken from the key's budget.

use horde_api::image::ImageRequest;

/// A budget of −1 (or any negative number) is unlimited.
pub const UNLIMITED: f64 = -1.0;

#[derive(Debug, Clone, PartialEq)]
pub struct SharedKey {
    /// The stored form of the key (its salted hash); the key itself is shown once.
    pub id_hash: String,
    pub owner_id: i64,
    pub name: String,
    /// Kudos still spendable through this key; negative means unlimited.
    pub kudos: f64,
    /// Unix seconds after which the key stops working.
    pub expiry: Option<i64>,
    /// Kudos spent through this key so far.
    pub utilized: f64,
    /// −1: no limit.
    pub max_image_pixels: i64,
    pub max_image_steps: i64,
    pub max_text_tokens: i64,
    pub created: i64,
}

/// Why a shared key may not be used for a request (each has the public horde's rc).
#[derive(Debug, Clone, PartialEq)]
pub enum SharedKeyRefusal {
    Expired,
    Empty,
    /// The budget left is below what the request will cost.
    InsufficientKudos {
        left: f64,
        cost: f64,
    },
    TooLarge {
        pixels: u64,
        max: i64,
    },
    TooManySteps {
        steps: u32,
        max: i64,
    },
    /// A text request asking for more tokens than the key's `max_text_tokens`.
    TooManyTokens {
        tokens: u32,
        max: i64,
    },
}

impl SharedKey {
    pub fn is_unlimited(&self) -> bool {
        self.kudos < 0.0
    }

    /// Whether `request`, costing `cost` kudos, may be made with this key at `now`.
    pub fn check_use(
        &self,
        request: &ImageRequest,
        cost: f64,
        now: i64,
    ) -> Result<(), SharedKeyRefusal> {
        self.check_budget(cost, now)?;
        let p = &request.params;
        let pixels = u64::from(p.width) * u64::from(p.height);
        if self.max_image_pixels >= 0 && pixels > self.max_image_pixels as u64 {
            return Err(SharedKeyRefusal::TooLarge {
                pixels,
                max: self.max_image_pixels,
            });
        }
        let steps = p.effective_steps();
        if self.max_image_steps >= 0 && i64::from(steps) > self.max_image_steps {
            return Err(SharedKeyRefusal::TooManySteps {
                steps,
                max: self.max_image_steps,
            });
        }
        Ok(())
    }

    /// Whether a text request of `max_length` tokens a text, costing `cost` kudos, may be made
    /// with this key at `now` (`max_text_tokens`: −1 is no limit).
    pub fn check_text_use(
        &self,
        max_length: u32,
        cost: f64,
        now: i64,
    ) -> Result<(), SharedKeyRefusal> {
        self.check_budget(cost, now)?;
        if self.max_text_tokens >= 0 && i64::from(max_length) > self.max_text_tokens {
            return Err(SharedKeyRefusal::TooManyTokens {
                tokens: max_length,
                max: self.max_text_tokens,
            });
        }
        Ok(())
    }

    /// Not expired, not empty, and `cost` within what is left.
    fn check_budget(&self, cost: f64, now: i64) -> Result<(), SharedKeyRefusal> {
        if self.expiry.is_some_and(|expiry| now >= expiry) {
            return Err(SharedKeyRefusal::Expired);
        }
        if self.kudos == 0.0 {
            return Err(SharedKeyRefusal::Empty);
        }
        if !self.is_unlimited() && self.kudos < cost {
            return Err(SharedKeyRefusal::InsufficientKudos {
                left: self.kudos,
                cost,
            });
        }
        Ok(())
    }
}

/// How many shared keys a user may hold: 3, 10 when trusted, 1000 for education accounts.
pub fn max_shared_keys(trusted: bool, education: bool) -> usize {
    if education {
        1000
    } else if trusted {
        10
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SharedKey {
        SharedKey {
            id_hash: "h".into(),
            owner_id: 1,
            name: "for my friend".into(),
            kudos: 20.0,
            expiry: Some(1000),
            utilized: 0.0,
            max_image_pixels: 512 * 512,
            max_image_steps: 30,
            max_text_tokens: -1,
            created: 0,
        }
    }

    fn request(width: u32, steps: u32) -> ImageRequest {
        let mut r = ImageRequest::new("p");
        (r.params.width, r.params.height, r.params.steps) = (width, width, Some(steps));
        r
    }

    #[test]
    fn a_key_is_refused_past_expiry_without_budget_or_over_its_limits() {
        let k = key();
        assert_eq!(k.check_use(&request(512, 30), 10.0, 999), Ok(()));
        assert_eq!(
            k.check_use(&request(512, 30), 10.0, 1000),
            Err(SharedKeyRefusal::Expired)
        );
        assert_eq!(
            k.check_use(&request(512, 30), 25.0, 0),
            Err(SharedKeyRefusal::InsufficientKudos {
                left: 20.0,
                cost: 25.0
            })
        );
        assert!(matches!(
            k.check_use(&request(576, 30), 1.0, 0),
            Err(SharedKeyRefusal::TooLarge { .. })
        ));
        assert!(matches!(
            k.check_use(&request(512, 31), 1.0, 0),
            Err(SharedKeyRefusal::TooManySteps { .. })
        ));
        let empty = SharedKey {
            kudos: 0.0,
            ..key()
        };
        assert_eq!(
            empty.check_use(&request(64, 1), 0.0, 0),
            Err(SharedKeyRefusal::Empty)
        );
        let unlimited = SharedKey {
            kudos: UNLIMITED,
            expiry: None,
            max_image_pixels: -1,
            max_image_steps: -1,
            ..key()
        };
        assert_eq!(
            unlimited.check_use(&request(2048, 150), 1e6, i64::MAX - 1),
            Ok(())
        );
    }

    #[test]
    fn trusted_and_education_accounts_hold_more_keys() {
        assert_eq!(max_shared_keys(false, false), 3);
        assert_eq!(max_shared_keys(true, false), 10);
        assert_eq!(max_shared_keys(true, true), 1000);
    }
}
