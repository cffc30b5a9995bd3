//! The protos' `buf.validate` rules are enforced by the shared validator.

use prost::{Message, Name};
use shopmesh_proto::shopmesh::users::v1::{CreateUserRequest, UpdateMeRequest, UserUpdate};
use shopmesh_proto::validate::{descriptors, validate_encoded};

fn violations<M: Message + Name>(message: &M) -> Vec<String> {
    let descriptor = descriptors().get_message_by_name(&M::full_name()).unwrap();
    match validate_encoded(descriptor, &message.encode_to_vec()) {
        Ok(()) => Vec::new(),
        Err(violations) => violations.into_iter().map(|v| v.field).collect(),
    }
}

#[test]
fn a_valid_registration_passes() {
    let request = CreateUserRequest {
        email: "ada@example.com".into(),
        password: "correct horse battery".into(),
        display_name: "Ada".into(),
        locale: "en-GB".into(),
    };
    assert_eq!(violations(&request), Vec::<String>::new());
}

#[test]
fn every_broken_field_is_named() {
    let request = CreateUserRequest {
        email: "not an address".into(),
        password: "short".into(),
        display_name: "x".repeat(101),
        locale: "not a locale!".into(),
    };
    let mut fields = violations(&request);
    fields.sort();
    assert_eq!(fields, ["display_name", "email", "locale", "password"]);
}

#[test]
fn message_rules_written_in_cel_run() {
    let request = UpdateMeRequest {
        user: Some(UserUpdate::default()),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
    };
    assert_eq!(
        violations(&request),
        [""],
        "empty display_name under the mask"
    );
}
