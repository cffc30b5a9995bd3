//! Whatever a client sends as path, query and body, routing and transcoding answer with a
//! message or a list of violations, and never panic: the coverage-guided fuzzer's corpus
//! (`proxy/fuzz`, run by `scripts/fuzz`) replayed through the same target body, and property
//! tests over paths, queries and bodies near the real ones.

use http::Method;
use proptest::prelude::*;
use shopmesh_edge::fuzz::transcode_bytes;
use shopmesh_edge::routes::Router;
use shopmesh_edge::template::Template;
use shopmesh_edge::transcode::request_message;
use shopmesh_proto::validate::{descriptors, validate};

fn router() -> &'static Router {
    static ROUTER: std::sync::OnceLock<Router> = std::sync::OnceLock::new();
    ROUTER.get_or_init(|| Router::from_descriptors(descriptors()).unwrap())
}

/// Every input the fuzzer kept (its corpus) and every one that once broke the transcoder.
#[test]
fn the_fuzzers_inputs_replay_without_a_panic() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for folder in ["corpus/transcoder", "regressions/transcoder"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| transcode_bytes(router(), &data));
            assert!(outcome.is_ok(), "{} panics the transcoder", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 10, "the corpus is missing: {replayed} inputs");
}

/// Paths near the real ones: their segments and verbs, escapes and junk.
fn paths() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("v1".to_owned()),
        Just("users".to_owned()),
        Just("me".to_owned()),
        Just("products:search".to_owned()),
        Just("orders".to_owned()),
        Just("o-1:cancel".to_owned()),
        "[a-z0-9%:._-]{0,12}",
        any::<String>(),
    ];
    prop::collection::vec(segment, 0..6).prop_map(|segments| format!("/{}", segments.join("/")))
}

/// JSON-ish bodies: real field names with values of every type, and raw bytes.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(serde_json::json!(null)),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::json!(["a", 1, {}])),
        Just(serde_json::json!({"name": "x", "line1": 5})),
    ];
    let key = prop_oneof![
        Just("email"),
        Just("password"),
        Just("display_name"),
        Just("displayName"),
        Just("roles"),
        Just("phone"),
        Just("addresses"),
        Just("page_size"),
        Just("sort"),
        Just("refresh_token"),
        Just("nope"),
    ];
    let object = prop::collection::btree_map(key, value, 0..6)
        .prop_map(|map| serde_json::to_vec(&map).unwrap());
    prop_oneof![object, prop::collection::vec(any::<u8>(), 0..64)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn templates_parse_or_refuse_without_panicking(source in any::<String>(), path in paths()) {
        if let Ok(template) = Template::parse(&source) {
            let _ = template.matches(&path);
        }
    }

    #[test]
    fn any_request_is_transcoded_or_refused(
        method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PATCH), Just(Method::DELETE)],
        path in paths(),
        query in prop::option::of("[a-z_.=&%0-9A-Z+]{0,40}"),
        body in bodies(),
    ) {
        if let Ok((route, bindings)) = router().find(&method, &path) {
            match request_message(route, &bindings, query.as_deref(), &body, "application/json") {
                Ok(message) => {
                    let _ = validate(&message);
                }
                Err(violations) => prop_assert!(!violations.is_empty()),
            }
        }
    }
}
