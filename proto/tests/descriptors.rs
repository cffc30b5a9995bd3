//! The descriptor set the edge reads must keep the options it routes, validates and authorises
//! by; re-encoding through prost-types would silently drop them.

use prost_reflect::{DescriptorPool, Value};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(shopmesh_proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

#[test]
fn every_method_declares_its_access_rule() {
    let pool = pool();
    let access = pool
        .get_extension_by_name("shopmesh.options.v1.access")
        .expect("access option defined");
    let mut methods = 0;
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("shopmesh."))
    {
        for method in service.methods() {
            methods += 1;
            assert!(
                method.options().has_extension(&access),
                "{} has no access rule",
                method.full_name()
            );
        }
    }
    assert!(methods > 20, "only {methods} methods found");
}

#[test]
fn http_rules_survive_compilation() {
    let pool = pool();
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("http option defined");
    let method = pool
        .get_service_by_name("shopmesh.users.v1.UserService")
        .and_then(|s| s.methods().find(|m| m.name() == "CreateUser"))
        .expect("UserService.CreateUser");
    let options = method.options();
    let rule = options.get_extension(&http);
    let rule = rule.as_message().expect("HttpRule message");
    assert_eq!(
        rule.get_field_by_name("post").as_deref(),
        Some(&Value::String("/v1/users".into()))
    );
    assert_eq!(
        rule.get_field_by_name("body").as_deref(),
        Some(&Value::String("*".into()))
    );
}

#[test]
fn validation_rules_survive_compilation() {
    let pool = pool();
    let field = pool
        .get_message_by_name("shopmesh.users.v1.CreateUserRequest")
        .and_then(|m| m.get_field_by_name("password"))
        .expect("CreateUserRequest.password");
    let rules = pool
        .get_extension_by_name("buf.validate.field")
        .expect("buf.validate imported");
    assert!(
        field.options().has_extension(&rules),
        "password lost its validation rules"
    );
}
