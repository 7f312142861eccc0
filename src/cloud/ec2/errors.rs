//! Classifies EC2 errors into `CloudError`, by error code.
//!
//! The code tables are pure so they can be tested without the SDK. The SDK's own retry would
//! retry an HTTP 500 `InsufficientInstanceCapacity` on the same offering; the launch path turns
//! capacity codes into an immediate fall-back to other offerings instead.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::cloud::CloudError;

/// What an error code means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No capacity for the offerings tried: back them off and try others.
    Capacity,
    /// Rate-limited: wait and retry.
    Throttled,
    /// The object does not exist.
    NotFound,
    /// The request or account is misconfigured: a human must act.
    Config,
    /// Transient server-side or transport failure: retrying the same call may succeed.
    Transient,
}

/// Error codes that mean "no capacity for this offering now" (from CreateFleet `Errors[]`,
/// RunInstances and Karpenter's list).
pub const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "MaxSpotFleetRequestCountExceeded",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "SpotMaxPriceTooLow",
    "Unsupported",
    "ReservationCapacityExceeded",
];

/// Throttling codes EC2 returns (RequestLimitExceeded is the usual one).
pub const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "EC2ThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];

/// Classifies an EC2 error code.
pub fn classify_code(code: &str) -> ErrorClass {
    if CAPACITY_CODES.contains(&code) {
        ErrorClass::Capacity
    } else if THROTTLING_CODES.contains(&code) {
        ErrorClass::Throttled
    } else if code.ends_with(".NotFound") || code == "InvalidInstanceID.Malformed" {
        ErrorClass::NotFound
    } else if code.starts_with("Invalid")
        || code.starts_with("Unauthorized")
        || code.starts_with("AuthFailure")
        || code == "MissingParameter"
        || code == "OptInRequired"
        || code == "Blocked"
        || code == "UnsupportedOperation"
        || code == "DryRunOperation"
    {
        ErrorClass::Config
    } else {
        ErrorClass::Transient
    }
}

/// A classified SDK error, keeping the code and message for the log and the `CloudError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// What it means.
    pub class: ErrorClass,
    /// EC2's error code, when there was a service reply.
    pub code: Option<String>,
    /// Human-readable text.
    pub message: String,
}

/// Classifies any EC2 SDK error: service errors by code, HTTP 5xx without a code and transport
/// failures (timeouts, connection resets) as transient.
pub fn classify<E, R>(err: &SdkError<E, R>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    classify_with(err, classify_code)
}

/// Classifies an error of any AWS SDK (they share `SdkError`) with that service's code table,
/// so SQS errors fall into the same classes as EC2's.
pub fn classify_with<E, R>(err: &SdkError<E, R>, code_class: fn(&str) -> ErrorClass) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = aws_sdk_ec2::error::DisplayErrorContext(err).to_string();
    match err {
        SdkError::ServiceError(_) => match err.code() {
            Some(code) => Classified {
                class: code_class(code),
                code: Some(code.to_string()),
                message: err.message().map_or(message, ToString::to_string),
            },
            None => Classified {
                class: ErrorClass::Transient,
                code: None,
                message,
            },
        },
        SdkError::ConstructionFailure(_) => Classified {
            class: ErrorClass::Config,
            code: None,
            message,
        },
        _ => Classified {
            class: ErrorClass::Transient,
            code: None,
            message,
        },
    }
}

impl Classified {
    /// The `CloudError` for a call outside the launch path (capacity errors there name no offering).
    pub fn into_cloud_error(self, what: &str) -> CloudError {
        let detail = match &self.code {
            Some(code) => format!("{what}: {code}: {}", self.message),
            None => format!("{what}: {}", self.message),
        };
        match self.class {
            ErrorClass::Throttled => CloudError::Throttled,
            ErrorClass::NotFound => CloudError::NotFound(detail),
            ErrorClass::Config => CloudError::Config { reason: detail },
            ErrorClass::Capacity => CloudError::InsufficientCapacity {
                offerings: Vec::new(),
            },
            ErrorClass::Transient => CloudError::Other(detail),
        }
    }
}

/// Classifies and converts in one step, for `map_err`.
pub fn to_cloud_error<E, R>(what: &'static str) -> impl Fn(SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| classify(&e).into_cloud_error(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify() {
        for (code, class) in [
            ("InsufficientInstanceCapacity", ErrorClass::Capacity),
            ("UnfulfillableCapacity", ErrorClass::Capacity),
            ("MaxSpotInstanceCountExceeded", ErrorClass::Capacity),
            ("VcpuLimitExceeded", ErrorClass::Capacity),
            ("InsufficientFreeAddressesInSubnet", ErrorClass::Capacity),
            ("RequestLimitExceeded", ErrorClass::Throttled),
            ("InvalidInstanceID.NotFound", ErrorClass::NotFound),
            (
                "InvalidLaunchTemplateName.NotFoundException",
                ErrorClass::Config,
            ),
            ("InvalidParameterValue", ErrorClass::Config),
            ("UnauthorizedOperation", ErrorClass::Config),
            ("InternalError", ErrorClass::Transient),
            ("ServiceUnavailable", ErrorClass::Transient),
        ] {
            assert_eq!(classify_code(code), class, "{code}");
        }
    }
}
