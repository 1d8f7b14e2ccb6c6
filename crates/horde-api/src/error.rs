//! The AI Horde error body and its return codes (`rc`).
//!
//! One table maps each code to its HTTP status, so a handler never picks a status by hand.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The error body of every 4xx/5xx answer: `{message, rc, errors?}`.
///
/// Payload validation failures carry `errors` (field → reason) and message
/// `"Input payload validation failed"`, as Flask-RESTX does on the public horde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
}

macro_rules! return_codes {
    ($($name:ident => $status:expr),* $(,)?) => {
        /// Stable error codes (`rc`) of AI Horde API v2 that this server emits, each with its
        /// HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rc { $($name),* }

        impl Rc {
            /// The code as it appears in the `rc` field.
            pub fn as_str(self) -> &'static str {
                match self { $(Rc::$name => stringify!($name)),* }
            }
            /// The HTTP status the public horde answers with for this code.
            pub fn status(self) -> u16 {
                match self { $(Rc::$name => $status),* }
            }
        }
    };
}

return_codes! {
    // 400
    BadRequest => 400,
    ValidationError => 400,
    MissingPrompt => 400,
    InvalidSize => 400,
    TooManySteps => 400,
    BadCFGDecimals => 400,
    TooManyUpscalers => 400,
    SourceMaskUnnecessary => 400,
    UnsupportedSampler => 400,
    UnsupportedModel => 400,
    UnexpectedModelName => 400,
    DuplicateGen => 400,
    AbortedGen => 400,
    NulByteInPayload => 400,
    NoWorkerModSelected => 400,
    PolymorphicNameConflict => 400,
    TooManyLoras => 400,
    BadLoraVersion => 400,
    TooManyTIs => 400,
    ControlNetUnsupported => 400,
    ControlNetSourceMissing => 400,
    ControlNetInvalidPayload => 400,
    ControlNetMismatch => 400,
    ControlNetInpaintingMismatch => 400,
    ControlStrengthWithoutControlType => 400,
    ControlStrengthOutOfRange => 400,
    InvalidPriorityUsername => 400,
    RequiresTrust => 400,
    WorkerNameAlreadyExists => 400,
    TooLongWorkerName => 400,
    InvalidWebhook => 400,
    ImageValidationFailed => 400,
    UploadAlreadyUsed => 409,
    InvalidTargetUsername => 400,
    KudosTransferToAnon => 400,
    KudosTransferToSelf => 400,
    KudosTransferFromAnon => 400,
    TooFastKudosTransfers => 400,
    SourceAccountFlagged => 400,
    TargetAccountFlagged => 400,
    NegativeKudosTransfer => 400,
    InvalidKudosTransferAmount => 400,
    KudosTransferNotEnough => 400,
    EducationCannotSendKudos => 400,
    NoUserModSelected => 400,
    NoSharedKeyModSelected => 400,
    NoFilterModSelected => 400,
    // teams and worker messages (issue 29)
    NoTeamModSelected => 400,
    TeamNameAlreadyExists => 400,
    ProfaneTeamName => 400,
    ProfaneTeamInfo => 400,
    CorruptPrompt => 400,
    TooManyExtraSourceImages => 400,
    MoreThanMinExtraSourceImage => 400,
    InvalidExtraSourceImages => 400,
    ProfaneWorkerName => 400,
    ProfaneWorkerInfo => 400,
    ProfaneBridgeAgent => 400,
    SourceImageResolutionExceeded => 400,
    SourceImageUnreadable => 400,
    InpaintingMissingMask => 400,
    InvalidPromptSize => 400,
    // ratings (`POST /generate/rate/{id}`)
    ProcGenNotFound => 400,
    InvalidAestheticAttempt => 400,
    AestheticsNotCompleted => 400,
    AestheticsNotPublic => 400,
    AestheticsDuplicate => 400,
    AestheticsMissing => 400,
    AestheticsSolo => 400,
    AestheticsAlreadyExist => 400,
    // the horde's modes and administration (issue 29)
    MaintenanceMode => 400,
    NoHordeModSelected => 400,
    KudosValidationError => 400,
    // text generation's rules
    TokenOverflow => 400,
    MissingFullSamplerOrder => 400,
    TooManyStopSequences => 400,
    ExcessiveStopSequence => 400,
    // styles and collections
    StylePromptMissingVars => 400,
    StyleMismatch => 400,
    ExampleURLAlreadyInUse => 400,
    StylesAnonForbidden => 403,
    StylesRequiresCustomizer => 403,
    TooManyStyleExamples => 403,
    // 401
    InvalidAPIKey => 401,
    // 403
    Forbidden => 403,
    WrongCredentials => 403,
    NotModerator => 403,
    NotAdmin => 403,
    NotOwner => 403,
    AnonForbidden => 403,
    AnonForbiddenWorker => 403,
    WorkerMaintenance => 403,
    WorkerFlaggedMaintenance => 403,
    KudosUpfront => 403,
    SharedKeyEmpty => 403,
    SharedKeyExpired => 403,
    SharedKeyInsufficientKudos => 403,
    TooManySharedKeys => 403,
    TooManyWorkers => 403,
    TestUsersDisabled => 403,
    TimeoutIP => 403,
    UntrustedTeamCreation => 403,
    MessagesOnlyOwnWorkers => 403,
    WorkerInviteOnly => 403,
    DeletedUser => 403,
    NotPrivileged => 403,
    // 404
    InvalidJobID => 404,
    RequestNotFound => 404,
    WorkerNotFound => 404,
    UserNotFound => 404,
    ThingNotFound => 404,
    SharedKeyInvalid => 404,
    TeamNotFound => 404,
    // 405
    MethodNotAllowed => 405,
    // 408
    RequestTimeout => 408,
    // 410
    RequestExpired => 410,
    // 423
    Locked => 423,
    // 413
    PayloadTooLarge => 413,
    // 414, 415, 431
    UriTooLong => 414,
    UnsupportedMediaType => 415,
    RequestHeaderFieldsTooLarge => 431,
    // 429
    TooManyPrompts => 429,
    RateLimited => 429,
    DailyQuotaExceeded => 429,
    // 500
    InternalServerError => 500,
    // 503
    TooManyConnections => 503,
}

impl ErrorBody {
    pub fn new(rc: Rc, message: impl Into<String>) -> Self {
        ErrorBody {
            message: message.into(),
            rc: Some(rc.as_str().to_string()),
            errors: None,
        }
    }

    /// The public horde's schema-validation failure: message, `errors` map, and (ours) an `rc`.
    pub fn validation(errors: BTreeMap<String, String>) -> Self {
        ErrorBody {
            message: "Input payload validation failed".to_string(),
            rc: Some(Rc::ValidationError.as_str().to_string()),
            errors: Some(errors),
        }
    }
}

/// Field → reason map collected while checking the bounds of a body.
#[derive(Debug, Default)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_insert_with(|| reason.into());
    }
    /// Record `field` as out of range when `value` is outside `min..=max`.
    pub fn range<T: PartialOrd + std::fmt::Display>(
        &mut self,
        field: &str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min {
            self.add(field, format!("{value} is less than the minimum of {min}"));
        } else if value > max {
            self.add(
                field,
                format!("{value} is greater than the maximum of {max}"),
            );
        }
    }
    pub fn max_len<T>(&mut self, field: &str, items: &[T], max: usize) {
        if items.len() > max {
            self.add(
                field,
                format!("{} items is more than the maximum of {max}", items.len()),
            );
        }
    }
    /// A text of at most `max` characters.
    pub fn max_chars(&mut self, field: &str, text: &str, max: usize) {
        let chars = text.chars().count();
        if chars > max {
            self.add(
                field,
                format!("{chars} characters is more than the maximum of {max}"),
            );
        }
    }
    pub fn into_result(self) -> Result<(), ErrorBody> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ErrorBody::validation(self.0))
        }
    }
}
