//! Request validation from the protos' own `buf.validate` rules, one implementation for the edge
//! (on JSON-decoded requests) and every service (in [`crate::codec`], on each decoded request).

use std::sync::LazyLock;

use prost_protovalidate::{Error, Validator};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// The `google.rpc.ErrorInfo` domain and reason of a request that breaks its rules.
pub const ERROR_DOMAIN: &str = "shopmesh";
pub const INVALID_FIELDS: &str = "INVALID_FIELDS";

/// Every shopmesh message, service and option, decoded once from [`crate::FILE_DESCRIPTOR_SET`].
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built with this crate decodes")
    });
    &POOL
}

/// One broken rule of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path in proto names, dotted for nesting (`user.display_name`), or empty for a
    /// rule on the whole message.
    pub field: String,
    pub description: String,
}

/// Checks `message` against its `buf.validate` rules, reporting every violation.
pub fn validate(message: &DynamicMessage) -> Result<(), Vec<Violation>> {
    static VALIDATOR: LazyLock<Validator> = LazyLock::new(Validator::new);
    match VALIDATOR.validate(message) {
        Ok(()) => Ok(()),
        Err(Error::Validation(error)) => Err(error
            .violations()
            .iter()
            .map(|violation| Violation {
                field: violation.field_path(),
                // Some rules (string.email) carry no message; their id says what failed.
                description: if violation.message().is_empty() {
                    format!("breaks rule {}", violation.rule_id())
                } else {
                    violation.message().to_owned()
                },
            })
            .collect()),
        // A rule that cannot be evaluated is a bug in our protos, never the caller's fault; it
        // is still reported, because letting the request through unchecked would be worse.
        Err(other) => Err(vec![Violation {
            field: String::new(),
            description: format!("validation could not run: {other}"),
        }]),
    }
}

/// Decodes `bytes` as `descriptor` and validates it.
pub fn validate_encoded(descriptor: MessageDescriptor, bytes: &[u8]) -> Result<(), Vec<Violation>> {
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|error| {
        vec![Violation {
            field: String::new(),
            description: format!("malformed message: {error}"),
        }]
    })?;
    validate(&message)
}

/// The `INVALID_ARGUMENT` status listing `violations`, shaped as `shopmesh_kit::Error` shapes it
/// (`ErrorInfo` reason [`INVALID_FIELDS`] and one `BadRequest` violation per field).
pub fn invalid_argument(violations: &[Violation]) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    let mut details = ErrorDetails::with_error_info(
        INVALID_FIELDS,
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    for violation in violations {
        details.add_bad_request_violation(&violation.field, &violation.description);
    }
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid fields: {}", fields.join(", ")),
        details,
    )
}
