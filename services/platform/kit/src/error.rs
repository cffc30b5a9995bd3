//! One error type for every service, mapped in one place to a gRPC status (with
//! `google.rpc.ErrorInfo`, `BadRequest` and `RetryInfo` details) and to an HTTP status.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every error shopmesh raises.
pub const ERROR_DOMAIN: &str = "shopmesh";

/// What went wrong, in the terms a client can act on. Each kind has exactly one gRPC code and one
/// HTTP status; handlers pick a kind, never a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Aborted,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The gRPC code this kind travels as.
    pub fn code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::Aborted => Code::Aborted,
            Self::ResourceExhausted => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// The kind a received gRPC code stands for (codes we never raise fold into the nearest kind).
    pub fn from_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::Aborted => Self::Aborted,
            Code::ResourceExhausted => Self::ResourceExhausted,
            Code::DeadlineExceeded | Code::Cancelled => Self::DeadlineExceeded,
            Code::Unavailable => Self::Unavailable,
            Code::Ok | Code::Unknown | Code::Internal | Code::Unimplemented | Code::DataLoss => {
                Self::Internal
            }
        }
    }

    /// The HTTP status this kind answers with at the edge.
    pub fn http_status(self) -> u16 {
        http_status(self.code())
    }

    /// The reason used when a constructor is given none: the kind in SCREAMING_SNAKE_CASE.
    fn default_reason(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }
}

/// The HTTP status for a gRPC code, as grpc-gateway maps them.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

/// One violated rule of a request field, reported as a `google.rpc.BadRequest` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path in proto names, dotted for nesting (`shipping_address.city`).
    pub field: String,
    pub description: String,
}

/// An error a service returns to its caller.
///
/// `reason` is stable and machine-readable (`EMAIL_TAKEN`, `OUT_OF_STOCK`); `message` is for
/// people and may change. Internal causes are logged where they happen and never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    reason: Cow<'static, str>,
    message: String,
    metadata: BTreeMap<String, String>,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
}

macro_rules! constructors {
    ($($name:ident => $kind:ident),* $(,)?) => {$(
        #[doc = concat!("An error of kind [`ErrorKind::", stringify!($kind), "`].")]
        pub fn $name(reason: &'static str, message: impl Into<String>) -> Self {
            Self::new(ErrorKind::$kind, reason, message)
        }
    )*};
}

impl Error {
    /// An error of `kind` with a stable `reason` and a human `message`.
    pub fn new(
        kind: ErrorKind,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            reason: reason.into(),
            message: message.into(),
            metadata: BTreeMap::new(),
            violations: Vec::new(),
            retry_after: None,
        }
    }

    constructors! {
        invalid_argument => InvalidArgument,
        unauthenticated => Unauthenticated,
        permission_denied => PermissionDenied,
        not_found => NotFound,
        already_exists => AlreadyExists,
        failed_precondition => FailedPrecondition,
        aborted => Aborted,
        resource_exhausted => ResourceExhausted,
        unavailable => Unavailable,
    }

    /// A request whose fields broke rules: `INVALID_ARGUMENT` listing every violation.
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        let message = format!("invalid fields: {}", fields.join(", "));
        let mut error = Self::new(ErrorKind::InvalidArgument, "INVALID_FIELDS", message);
        error.violations = violations;
        error
    }

    /// A single invalid field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A UUID read from request field `field`: anything else is a clear invalid-field error.
    pub fn parse_id(field: &str, text: &str) -> Result<uuid::Uuid> {
        uuid::Uuid::parse_str(text).map_err(|_| Self::invalid_field(field, "must be a UUID"))
    }

    /// A failure that is ours, not the caller's. The cause is logged here with its context and
    /// replaced by a generic message, so no internal detail (or secret) reaches a client.
    pub fn internal(context: &str, cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::new(ErrorKind::Internal, "INTERNAL", "internal error")
    }

    /// Adds a key to the `ErrorInfo` metadata.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Tells the caller when to retry (`RetryInfo`, and `Retry-After` at the edge).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn violations(&self) -> &[FieldViolation] {
        &self.violations
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Reads an error back from a status received from a peer, details included. A status that
    /// carries no `ErrorInfo` keeps its code and message under the kind's default reason.
    pub fn from_status(status: &tonic::Status) -> Self {
        let kind = ErrorKind::from_code(status.code());
        let details = status.get_error_details();
        let mut error = match details.error_info() {
            Some(info) => Self::new(kind, info.reason.clone(), status.message()),
            None => Self::new(kind, kind.default_reason(), status.message()),
        };
        if let Some(info) = details.error_info() {
            error.metadata = info
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        if let Some(bad_request) = details.bad_request() {
            error.violations = bad_request
                .field_violations
                .iter()
                .map(|v| FieldViolation {
                    field: v.field.clone(),
                    description: v.description.clone(),
                })
                .collect();
        }
        error.retry_after = details.retry_info().and_then(|info| info.retry_delay);
        error
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for Error {}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let metadata: HashMap<String, String> = error.metadata.into_iter().collect();
        let mut details = ErrorDetails::with_error_info(error.reason, ERROR_DOMAIN, metadata);
        for violation in error.violations {
            details.add_bad_request_violation(violation.field, violation.description);
        }
        if let Some(delay) = error.retry_after {
            details.set_retry_info(Some(delay));
        }
        tonic::Status::with_error_details(error.kind.code(), error.message, details)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

/// The result type of service operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_a_round_trip_through_a_status() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::Aborted,
            ErrorKind::ResourceExhausted,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Unavailable,
        ];
        for kind in kinds {
            let sent =
                Error::new(kind, "SOME_REASON", "something happened").with_metadata("id", "42");
            let status = tonic::Status::from(sent.clone());
            assert_eq!(status.code(), kind.code());
            assert_eq!(Error::from_status(&status), sent, "{kind:?}");
        }
    }

    #[test]
    fn field_violations_and_retry_info_travel_as_details() {
        let sent = Error::invalid_fields(vec![
            FieldViolation {
                field: "email".into(),
                description: "value must be an email".into(),
            },
            FieldViolation {
                field: "shipping_address.city".into(),
                description: "required".into(),
            },
        ]);
        let received = Error::from_status(&tonic::Status::from(sent.clone()));
        assert_eq!(received.violations(), sent.violations());
        assert_eq!(
            received.message(),
            "invalid fields: email, shipping_address.city"
        );

        let limited = Error::resource_exhausted("TOO_MANY_ATTEMPTS", "slow down")
            .with_retry_after(Duration::from_secs(7));
        let received = Error::from_status(&tonic::Status::from(limited));
        assert_eq!(received.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(received.kind().http_status(), 429);
    }

    #[test]
    fn status_without_details_keeps_code_and_message() {
        let error = Error::from_status(&tonic::Status::not_found("no such thing"));
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert_eq!(error.reason(), "NOT_FOUND");
        assert_eq!(error.message(), "no such thing");
    }

    #[test]
    fn http_statuses_follow_grpc_gateway() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code), status, "{code:?}");
        }
    }
}
