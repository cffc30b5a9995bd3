//! The OpenAPI 3.1 document of the REST routes, generated from the same descriptors the edge
//! routes by: paths, parameters, request and response schemas, the bearer security scheme, the
//! error shape, and the proto comments as descriptions.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;
use serde_json::{Value, json};
use shopmesh_kit::access::Access;

use crate::routes::{Body, Route, Router};

/// The document, as JSON.
pub fn document(router: &Router) -> Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut schemas = Schemas::default();
    for route in router.routes() {
        let operation = operation(route, &mut schemas);
        paths
            .entry(openapi_path(&route.template.to_string()))
            .or_default()
            .insert(route.http_method.as_str().to_lowercase(), operation);
    }
    let mut components = schemas.done();
    components.insert("Status".into(), status_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "shopmesh",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The shopmesh REST API. Every route is generated from the gRPC services' `google.api.http` rules; errors are `google.rpc.Status` objects.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}

fn operation(route: &Route, schemas: &mut Schemas) -> Value {
    let method = &route.method;
    let input = method.input();
    let bound: BTreeSet<String> = route
        .template
        .variables()
        .map(|v| v.split('.').next().unwrap_or(v).to_owned())
        .collect();
    let mut parameters: Vec<Value> = route
        .template
        .variables()
        .map(|name| {
            json!({
                "name": name, "in": "path", "required": true,
                "schema": {"type": "string"},
                "description": field_path_comment(&input, name).unwrap_or_default(),
            })
        })
        .collect();
    parameters.extend(route.headers.iter().map(|header| {
        json!({
            "name": header.name, "in": "header", "required": header.required,
            "schema": if header.max_len > 0 {
                json!({"type": "string", "maxLength": header.max_len})
            } else {
                json!({"type": "string"})
            },
            "description": header.description,
        })
    }));
    let body_field = match &route.body {
        Body::Field(field) => Some(field.clone()),
        _ => None,
    };
    if route.body != Body::Whole {
        for field in input.fields() {
            if bound.contains(field.name()) || body_field.as_deref() == Some(field.name()) {
                continue;
            }
            if matches!(field.kind(), Kind::Message(ref m) if m.full_name() != "google.protobuf.FieldMask")
            {
                continue;
            }
            parameters.push(json!({
                "name": field.name(), "in": "query", "required": false,
                "schema": schemas.field(&field),
                "description": comment(field.parent_file().file_descriptor_proto(), field.path()).unwrap_or_default(),
            }));
        }
    }
    let mut operation = json!({
        "operationId": format!("{}_{}", method.parent_service().name(), method.name()),
        "tags": [method.parent_service().name()],
        "summary": comment(method.parent_file().file_descriptor_proto(), method.path())
            .and_then(|c| c.lines().next().map(str::to_owned))
            .unwrap_or_default(),
        "description": comment(method.parent_file().file_descriptor_proto(), method.path()).unwrap_or_default(),
        "parameters": parameters,
        "responses": {
            route.success_status.to_string(): success(route, schemas),
            "default": {
                "description": "An error, as a google.rpc.Status.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
            },
        },
    });
    let request_schema = match &route.body {
        Body::None => None,
        _ if input.full_name() == crate::transcode::HTTP_BODY => {
            Some(json!({"description": "The raw body, passed on byte for byte."}))
        }
        Body::Whole => Some(schemas.reference(&input)),
        Body::Field(field) => input.get_field_by_name(field).map(|f| schemas.field(&f)),
    };
    if let Some(schema) = request_schema {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    match &route.access {
        Access::Public => operation["security"] = json!([]),
        Access::Permission(permission) => {
            operation["security"] = json!([{"bearer": []}]);
            operation["x-permission"] = json!(permission);
        }
        _ => operation["security"] = json!([{"bearer": []}]),
    }
    operation
}

/// The success response: JSON, or for a server-streaming method a stream of Server-Sent
/// Events whose `message` events each carry one response message as JSON.
fn success(route: &Route, schemas: &mut Schemas) -> Value {
    let message = response_message(route);
    let schema = schemas.reference(&message);
    if !route.method.is_server_streaming() {
        return json!({
            "description": "Success.",
            "content": {"application/json": {"schema": schema}},
        });
    }
    json!({
        "description": format!(
            "A stream of Server-Sent Events. Each `message` event's `data` is the JSON of one `{}` \
             (the schema below), and its `id` counts the messages from 1. A failure after the \
             first message, the stream's time limit or the edge shutting down ends the stream \
             with an `error` event whose `data` is a google.rpc.Status; a failure before the \
             first message is an ordinary error answer. Comments (`: keep-alive`) arrive while \
             the stream is idle.",
            message.full_name()
        ),
        "content": {"text/event-stream": {"schema": schema}},
    })
}

fn response_message(route: &Route) -> MessageDescriptor {
    let output = route.method.output();
    route
        .response_body
        .as_deref()
        .and_then(|field| output.get_field_by_name(field))
        .and_then(|field| match field.kind() {
            Kind::Message(message) => Some(message),
            _ => None,
        })
        .unwrap_or(output)
}

/// `/v1/{name=shelves/*}` → `/v1/{name}`: OpenAPI has plain variables only.
fn openapi_path(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut skipping = false;
    for c in template.chars() {
        match c {
            '=' if !skipping && out.rfind('{') > out.rfind('}') => skipping = true,
            '}' => {
                skipping = false;
                out.push(c);
            }
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

/// The leading comment at `path` in a file's source info.
fn comment(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    file.source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|location| location.path == path)
        .and_then(|location| location.leading_comments.as_deref())
        .map(|text| {
            text.lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        })
        .filter(|text| !text.is_empty())
}

fn field_path_comment(message: &MessageDescriptor, path: &str) -> Option<String> {
    let (head, rest) = path
        .split_once('.')
        .map_or((path, None), |(h, r)| (h, Some(r)));
    let field = message.get_field_by_name(head)?;
    match (rest, field.kind()) {
        (Some(rest), Kind::Message(inner)) => field_path_comment(&inner, rest),
        _ => comment(field.parent_file().file_descriptor_proto(), field.path()),
    }
}

/// The message schemas referenced so far.
#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
    pending: Vec<MessageDescriptor>,
}

impl Schemas {
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.done.contains_key(&name) && !self.pending.iter().any(|m| m.full_name() == name) {
            self.pending.push(message.clone());
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let item = match field.kind() {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0})
            }
            // Proto3 JSON writes 64-bit integers as strings.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(descriptor) => json!({
                "type": "string",
                "enum": descriptor.values().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
            }),
            Kind::Message(message) if field.is_map() => {
                let value = message.map_entry_value_field();
                json!({"type": "object", "additionalProperties": self.field(&value)})
            }
            Kind::Message(message) => self.reference(&message),
        };
        if field.is_list() {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }

    fn done(mut self) -> serde_json::Map<String, Value> {
        while let Some(message) = self.pending.pop() {
            let name = message.full_name().to_owned();
            if self.done.contains_key(&name) {
                continue;
            }
            let mut properties = serde_json::Map::new();
            for field in message.fields() {
                let mut schema = self.field(&field);
                if let Some(text) =
                    comment(field.parent_file().file_descriptor_proto(), field.path())
                    && let Some(object) = schema.as_object_mut()
                    && !object.contains_key("$ref")
                {
                    object.insert("description".into(), json!(text));
                }
                properties.insert(field.name().to_owned(), schema);
            }
            let mut schema = json!({"type": "object", "properties": properties});
            if let Some(text) = comment(
                message.parent_file().file_descriptor_proto(),
                message.path(),
            ) {
                schema["description"] = json!(text);
            }
            self.done.insert(name, schema);
        }
        self.done.into_iter().collect()
    }
}

/// Schemas of the well-known types, which proto3 JSON writes specially.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
        }
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "description": "Comma-separated field paths."})
        }
        "google.protobuf.Struct" | "google.protobuf.Any" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        _ => return None,
    })
}

fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error (google.rpc.Status). `details` holds google.rpc.ErrorInfo (a stable `reason`), BadRequest (one entry per invalid field) and RetryInfo.",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}}},
        },
        "required": ["code", "message"],
    })
}

#[cfg(test)]
mod tests {
    use shopmesh_proto::validate::descriptors;

    use super::*;

    #[test]
    fn every_route_is_documented_with_its_schemas() {
        let router = Router::from_descriptors(descriptors()).unwrap();
        let document = document(&router);
        let paths = document["paths"].as_object().unwrap();
        for route in router.routes() {
            let path = openapi_path(&route.template.to_string());
            assert!(
                paths[&path]
                    .get(route.http_method.as_str().to_lowercase())
                    .is_some(),
                "{path}"
            );
        }
        let me = &paths["/v1/users/me"]["get"];
        assert_eq!(me["security"], json!([{"bearer": []}]));
        assert!(
            me["summary"].as_str().unwrap().contains("caller"),
            "{}",
            me["summary"]
        );
        assert_eq!(paths["/v1/users"]["post"]["security"], json!([]));
        assert!(paths["/v1/users"]["post"]["responses"].get("201").is_some());
        let roles = &paths["/v1/users/{id}/roles"]["post"];
        assert_eq!(roles["x-permission"], "users.roles.write");
        assert_eq!(roles["parameters"][0]["in"], "path");
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let user = &schemas["shopmesh.users.v1.User"];
        assert_eq!(user["properties"]["created_at"]["format"], "date-time");
        // Every reference resolves.
        let text = document.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "unresolved {name}");
        }
    }

    #[test]
    fn a_streaming_route_answers_events_of_its_message() {
        let router = Router::from_descriptors(descriptors()).unwrap();
        let document = document(&router);
        let success = &document["paths"]["/v1/orders/{id}/events"]["get"]["responses"]["200"];
        assert_eq!(
            success["content"]["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/shopmesh.orders.v1.WatchOrderResponse"
        );
        assert!(success["content"].get("application/json").is_none());
        let description = success["description"].as_str().unwrap();
        assert!(
            description
                .contains("`data` is the JSON of one `shopmesh.orders.v1.WatchOrderResponse`"),
            "{description}"
        );
        // Unary routes keep their JSON answer.
        let me = &document["paths"]["/v1/users/me"]["get"]["responses"]["200"];
        assert!(me["content"].get("application/json").is_some());
    }

    #[test]
    fn variable_patterns_are_dropped_from_paths() {
        assert_eq!(openapi_path("/v1/{name=shelves/*}/x"), "/v1/{name}/x");
        assert_eq!(
            openapi_path("/v1/orders/{id}:cancel"),
            "/v1/orders/{id}:cancel"
        );
    }
}
