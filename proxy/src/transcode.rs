//! JSON ⇄ protobuf for the REST routes: a request message from the path bindings, the query
//! and the JSON body; the JSON of a response message; the JSON of an error status. Proto3 JSON
//! both ways: requests may use proto field names or lowerCamelCase, responses use proto names.

use std::collections::HashMap;

use base64::Engine as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};
use shopmesh_proto::validate::Violation;
use tonic_types::StatusExt;

use crate::routes::{Body, Route};
use crate::template::Bindings;

/// The full name of the message that carries a raw body and its content type.
pub const HTTP_BODY: &str = "google.api.HttpBody";

/// Builds the request message of `route`. A method taking `google.api.HttpBody` gets the body
/// bytes untouched (a webhook's signature covers the exact bytes) and `content_type`.
pub fn request_message(
    route: &Route,
    bindings: &Bindings,
    query: Option<&str>,
    body: &[u8],
    content_type: &str,
) -> Result<DynamicMessage, Vec<Violation>> {
    let descriptor = route.method.input();
    if descriptor.full_name() == HTTP_BODY {
        let mut message = DynamicMessage::new(descriptor);
        message.set_field_by_name("content_type", Value::String(content_type.to_owned()));
        message.set_field_by_name("data", Value::Bytes(body.to_vec().into()));
        return Ok(message);
    }
    let mut message = match &route.body {
        Body::Whole if !body.is_empty() => from_json(descriptor.clone(), body, "")?,
        Body::Field(field) if !body.is_empty() => {
            let mut message = DynamicMessage::new(descriptor.clone());
            let field = descriptor.get_field_by_name(field).ok_or_else(|| {
                violation(
                    "",
                    format!("the route's body field `{field}` does not exist"),
                )
            })?;
            let Kind::Message(inner) = field.kind() else {
                return Err(violation(field.name(), "the body must be a JSON object"));
            };
            let value = from_json(inner.clone(), body, field.name())?;
            if let Some(mask) = descriptor.get_field_by_name("update_mask") {
                // PATCH without `?update_mask=`: the keys of the body say what changes.
                message.set_field(&mask, field_mask(&inner, &value));
            }
            message.set_field(&field, Value::Message(value));
            message
        }
        _ => DynamicMessage::new(descriptor.clone()),
    };
    for (path, text) in bindings {
        set_path(&mut message, path, text, false)?;
    }
    if route.body != Body::Whole
        && let Some(query) = query
    {
        let mut cleared = Vec::new();
        for (key, text) in form_pairs(query) {
            // A query parameter replaces a value from the body, appending for repeated fields.
            let repeat = cleared.contains(&key);
            set_path(&mut message, &key, &text, repeat)?;
            cleared.push(key);
        }
    }
    Ok(message)
}

/// Parses `json` as `descriptor`; errors name the JSON path (`user.display_name`).
fn from_json(
    descriptor: MessageDescriptor,
    json: &[u8],
    prefix: &str,
) -> Result<DynamicMessage, Vec<Violation>> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut deserializer, &mut track);
    let parsed = DynamicMessage::deserialize_with_options(
        descriptor,
        tracked,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|message| deserializer.end().map(|()| message));
    parsed.map_err(|error| {
        let path = track.path().to_string();
        let path = path.trim_start_matches('.').trim_matches('?');
        let field = match (prefix, path) {
            (prefix, "") => prefix.to_owned(),
            ("", path) => path.to_owned(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        // serde_json's message names the line and column; the type mismatch is what matters.
        let reason = error.to_string();
        let reason = reason
            .split(" at line ")
            .next()
            .unwrap_or(&reason)
            .to_owned();
        vec![Violation {
            field,
            description: if json.is_empty() {
                "the body must be JSON".into()
            } else {
                reason
            },
        }]
    })
}

/// The field mask of the top-level fields present in `value` (proto names).
fn field_mask(descriptor: &MessageDescriptor, value: &DynamicMessage) -> Value {
    let paths: Vec<Value> = descriptor
        .fields()
        .filter(|field| value.has_field(field))
        .map(|field| Value::String(field.name().to_owned()))
        .collect();
    let mask_descriptor = descriptor
        .parent_pool()
        .get_message_by_name("google.protobuf.FieldMask")
        .expect("the pool holds google.protobuf.FieldMask");
    let mut mask = DynamicMessage::new(mask_descriptor);
    mask.set_field_by_name("paths", Value::List(paths));
    Value::Message(mask)
}

fn violation(field: &str, description: impl Into<String>) -> Vec<Violation> {
    vec![Violation {
        field: field.to_owned(),
        description: description.into(),
    }]
}

/// Sets the (possibly nested, dot-separated) field `path` from `text`. A repeated field gets
/// `text` appended when `append`, and replaces the list otherwise.
fn set_path(
    message: &mut DynamicMessage,
    path: &str,
    text: &str,
    append: bool,
) -> Result<(), Vec<Violation>> {
    let unknown = || violation(path, "no such field");
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let descriptor = message.descriptor();
    let field = descriptor
        .get_field_by_name(head)
        .or_else(|| descriptor.get_field_by_json_name(head))
        .ok_or_else(unknown)?;
    match rest {
        // `attr.colour=red`: one entry of a map keyed by strings.
        Some(key) if field.is_map() => {
            let Kind::Message(entry) = field.kind() else {
                return Err(unknown());
            };
            if !matches!(entry.map_entry_key_field().kind(), Kind::String) {
                return Err(violation(path, "only maps keyed by text bind from a URL"));
            }
            let value = scalar(&entry.map_entry_value_field(), text)
                .map_err(|reason| violation(path, reason))?
                .into_iter()
                .next()
                .ok_or_else(unknown)?;
            let Value::Map(map) = message.get_field_mut(&field) else {
                return Err(unknown());
            };
            map.insert(prost_reflect::MapKey::String(key.to_owned()), value);
            Ok(())
        }
        Some(rest) => {
            if field.is_list() {
                return Err(violation(path, "cannot bind inside a repeated field"));
            }
            let Value::Message(inner) = message.get_field_mut(&field) else {
                return Err(unknown());
            };
            set_path(inner, rest, text, append).map_err(|mut errors| {
                for error in &mut errors {
                    error.field = format!("{head}.{}", error.field);
                }
                errors
            })
        }
        None => {
            let value = scalar(&field, text).map_err(|reason| violation(path, reason))?;
            if field.is_list() {
                let Value::List(list) = message.get_field_mut(&field) else {
                    return Err(unknown());
                };
                if !append {
                    list.clear();
                }
                list.extend(value);
            } else if field.is_map() {
                return Err(violation(path, "maps cannot be set from a URL"));
            } else {
                let value = value.into_iter().next().ok_or_else(unknown)?;
                message.set_field(&field, value);
            }
            Ok(())
        }
    }
}

/// The value(s) of `field` written as `text` in a URL. A field mask takes comma-separated
/// paths; everything else one value.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Vec<Value>, String> {
    let number = |what: &str| format!("must be {what}");
    let value = match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err("must be true or false".into()),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| number("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| number("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            text.parse()
                .map_err(|_| number("an unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            text.parse()
                .map_err(|_| number("an unsigned 64-bit integer"))?,
        ),
        Kind::Float => Value::F32(text.parse().map_err(|_| number("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| number("a number"))?),
        Kind::Bytes => Value::Bytes(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
                .map_err(|_| "must be base64".to_owned())?
                .into(),
        ),
        Kind::Enum(descriptor) => Value::EnumNumber(enum_number(&descriptor, text)?),
        Kind::Message(descriptor) if descriptor.full_name() == "google.protobuf.FieldMask" => {
            let mut mask = DynamicMessage::new(descriptor);
            let paths = text
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.trim().to_owned()))
                .collect();
            mask.set_field_by_name("paths", Value::List(paths));
            Value::Message(mask)
        }
        Kind::Message(_) => return Err("cannot be set from a URL".into()),
    };
    Ok(vec![value])
}

/// An enum value by full name (`SEARCH_SORT_PRICE_ASC`), by the short form without the enum's
/// prefix in any case (`price_asc`), or by number.
fn enum_number(descriptor: &prost_reflect::EnumDescriptor, text: &str) -> Result<i32, String> {
    if let Some(value) = descriptor.get_value_by_name(text) {
        return Ok(value.number());
    }
    let wanted = text.to_ascii_uppercase();
    let prefix = enum_prefix(descriptor.name());
    if let Some(value) = descriptor
        .values()
        .find(|value| value.name().strip_prefix(&prefix) == Some(wanted.as_str()))
    {
        return Ok(value.number());
    }
    if let Ok(number) = text.parse::<i32>()
        && descriptor.get_value(number).is_some()
    {
        return Ok(number);
    }
    let names: Vec<String> = descriptor
        .values()
        .filter(|v| v.number() != 0)
        .map(|v| {
            v.name()
                .strip_prefix(&prefix)
                .unwrap_or(v.name())
                .to_ascii_lowercase()
        })
        .collect();
    Err(format!("must be one of {}", names.join(", ")))
}

/// `SearchSort` → `SEARCH_SORT_`, the prefix proto style puts on every value.
fn enum_prefix(name: &str) -> String {
    let mut prefix = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    prefix
}

/// `a=1&b=x%20y&b=z` as decoded pairs (`+` is a space).
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                crate::template::percent_decode(&text.replace('+', " "), false)
                    .unwrap_or_else(|| text.to_owned())
            };
            (decode(key), decode(value))
        })
        .collect()
}

/// The JSON of a response: the whole message, or its `response_body` field. A message proto3
/// JSON cannot express (a timestamp or duration out of its range, an `Any` of an unknown type)
/// is the service's fault: `INTERNAL`, never a panic.
pub fn response_json(route: &Route, message: &DynamicMessage) -> Result<Vec<u8>, tonic::Status> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    let selected = route
        .response_body
        .as_deref()
        .and_then(|field| message.get_field_by_name(field))
        .and_then(|value| value.as_message().cloned());
    let result = match &selected {
        Some(inner) => inner.serialize_with_options(&mut serializer, &options),
        None => message.serialize_with_options(&mut serializer, &options),
    };
    result.map_err(|error| {
        tracing::warn!(method = %route.grpc_path, %error, "an answer has no JSON form");
        tonic::Status::internal(format!(
            "{} answered with a message that has no JSON form",
            route.service
        ))
    })?;
    Ok(out)
}

/// The JSON body of an error, shaped as `google.rpc.Status`: `code`, `message` and `details`
/// with `ErrorInfo`, `BadRequest` and `RetryInfo` as proto3 JSON `Any`s.
pub fn status_json(status: &tonic::Status) -> Vec<u8> {
    let details = status.get_error_details();
    let mut list = Vec::new();
    if let Some(info) = details.error_info() {
        let metadata: HashMap<&String, &String> = info.metadata.iter().collect();
        list.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": metadata,
        }));
    }
    if let Some(bad_request) = details.bad_request() {
        let violations: Vec<serde_json::Value> = bad_request
            .field_violations
            .iter()
            .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
            .collect();
        list.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": violations,
        }));
    }
    if let Some(delay) = details.retry_info().and_then(|info| info.retry_delay) {
        list.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retry_delay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    serde_json::to_vec(&serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": list,
    }))
    .expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use http::Method;
    use shopmesh_proto::validate::descriptors;

    use super::*;
    use crate::routes::Router;

    fn build(
        method: Method,
        path_and_query: &str,
        body: &str,
    ) -> Result<DynamicMessage, Vec<Violation>> {
        let router = Router::from_descriptors(descriptors()).unwrap();
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let (route, bindings) = router.find(&method, path).unwrap();
        request_message(route, &bindings, query, body.as_bytes(), "application/json")
    }

    fn json(message: &DynamicMessage) -> serde_json::Value {
        let mut out = Vec::new();
        message
            .serialize_with_options(
                &mut serde_json::Serializer::new(&mut out),
                &SerializeOptions::new().use_proto_field_name(true),
            )
            .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn raw_bodies_reach_http_body_methods_byte_for_byte() {
        let router = Router::from_descriptors(descriptors()).unwrap();
        let (route, bindings) = router.find(&Method::POST, "/v1/webhooks/stripe").unwrap();
        let raw = br#"{"id": "evt_1",  "type":"x"}"#;
        let message = request_message(route, &bindings, None, raw, "application/json").unwrap();
        let data = message.get_field_by_name("data").unwrap();
        assert_eq!(data.as_bytes().unwrap().as_ref(), raw);
        assert_eq!(
            message.get_field_by_name("content_type").unwrap().as_str(),
            Some("application/json")
        );
    }

    #[test]
    fn a_whole_body_accepts_proto_and_camel_case_names() {
        let message = build(
            Method::POST,
            "/v1/users",
            r#"{"email":"ada@example.com","password":"correct horse battery","displayName":"Ada"}"#,
        )
        .unwrap();
        assert_eq!(
            json(&message),
            serde_json::json!({"email":"ada@example.com","password":"correct horse battery","display_name":"Ada"})
        );
    }

    #[test]
    fn path_query_and_body_field_bind_together() {
        let message = build(
            Method::POST,
            "/v1/users/u-1/roles",
            r#"{"roles":["admin"]}"#,
        )
        .unwrap();
        assert_eq!(
            json(&message),
            serde_json::json!({"id":"u-1","roles":["admin"]})
        );
        let message = build(
            Method::GET,
            "/v1/users?page_size=5&pageToken=abc&email=a%40b.c",
            "",
        )
        .unwrap();
        assert_eq!(
            json(&message),
            serde_json::json!({"page_size":5,"page_token":"abc","email":"a@b.c"})
        );
    }

    #[test]
    fn a_patch_body_fills_the_update_mask_from_its_keys() {
        let message = build(
            Method::PATCH,
            "/v1/users/me",
            r#"{"display_name":"Ada","phone":"+4930123456"}"#,
        )
        .unwrap();
        assert_eq!(
            json(&message)["update_mask"],
            // Proto3 JSON writes field-mask paths in lowerCamelCase.
            serde_json::json!("displayName,phone")
        );
        let explicit = build(
            Method::PATCH,
            "/v1/users/me?update_mask=phone",
            r#"{"display_name":"Ada","phone":"+1"}"#,
        )
        .unwrap();
        assert_eq!(json(&explicit)["update_mask"], serde_json::json!("phone"));
    }

    #[test]
    fn map_entries_bind_from_dotted_query_keys() {
        let message = build(
            Method::GET,
            "/v1/products:search?attr.colour=red&attr.size=42",
            "",
        )
        .unwrap();
        assert_eq!(
            json(&message)["attr"],
            serde_json::json!({"colour": "red", "size": "42"})
        );
    }

    #[test]
    fn enum_query_values_take_short_lower_case_names() {
        let message = build(Method::GET, "/v1/products:search?q=shoe&sort=price_asc", "").unwrap();
        let sort = message.get_field_by_name("sort").unwrap();
        let descriptor = message.descriptor().get_field_by_name("sort").unwrap();
        let Kind::Enum(enum_descriptor) = descriptor.kind() else {
            panic!()
        };
        let name = enum_descriptor
            .get_value(sort.as_enum_number().unwrap())
            .unwrap();
        assert!(name.name().ends_with("PRICE_ASC"), "{}", name.name());
        let error = build(Method::GET, "/v1/products:search?sort=cheapest", "").unwrap_err();
        assert_eq!(error[0].field, "sort");
        assert!(
            error[0].description.starts_with("must be one of"),
            "{}",
            error[0].description
        );
    }

    #[test]
    fn bad_json_is_refused_naming_the_field() {
        let malformed = build(Method::POST, "/v1/users", r#"{"email": "#).unwrap_err();
        assert_eq!(malformed.len(), 1);
        let wrong_type =
            build(Method::POST, "/v1/users/u-1/roles", r#"{"roles": "admin"}"#).unwrap_err();
        assert_eq!(wrong_type[0].field, "roles");
        let nested = build(Method::PATCH, "/v1/users/me", r#"{"display_name": 5}"#).unwrap_err();
        assert_eq!(nested[0].field, "user.display_name");
        let unknown = build(Method::POST, "/v1/users", r#"{"nope": 1}"#).unwrap_err();
        assert!(
            unknown[0].description.contains("nope"),
            "{}",
            unknown[0].description
        );
        let bad_number = build(Method::GET, "/v1/users?page_size=many", "").unwrap_err();
        assert_eq!(bad_number[0].field, "page_size");
        let unknown_param = build(Method::GET, "/v1/users?colour=red", "").unwrap_err();
        assert_eq!(unknown_param[0].field, "colour");
    }

    #[test]
    fn error_statuses_become_google_rpc_status_json() {
        let error = shopmesh_kit::Error::invalid_field("email", "must be an e-mail address");
        let body: serde_json::Value = serde_json::from_slice(&status_json(&error.into())).unwrap();
        assert_eq!(body["code"], 3);
        assert_eq!(body["details"][0]["reason"], "INVALID_FIELDS");
        assert_eq!(body["details"][1]["field_violations"][0]["field"], "email");
    }

    #[test]
    fn an_answer_without_a_json_form_is_internal_not_a_panic() {
        let router = Router::from_descriptors(descriptors()).unwrap();
        let (route, _) = router.find(&Method::GET, "/v1/products/p-1").unwrap();
        let mut product = DynamicMessage::new(route.method.output());
        let mut created = DynamicMessage::new(
            product
                .descriptor()
                .get_field_by_name("created_at")
                .unwrap()
                .kind()
                .as_message()
                .unwrap()
                .clone(),
        );
        // Year 10 000: beyond what RFC 3339, and so proto3 JSON, can write.
        created.set_field_by_name("seconds", Value::I64(253_402_300_800));
        product.set_field_by_name("created_at", Value::Message(created));
        let status = response_json(route, &product).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);

        product.clear_field_by_name("created_at");
        assert!(response_json(route, &product).is_ok());
    }
}
