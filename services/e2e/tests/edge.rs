//! The edge end to end through `shopmesh up`: REST clients on the routes the protos declare, the
//! refusals a front door owes them, and gRPC clients passing through.

mod support;

use shopmesh_kit::Error;
use shopmesh_proto::shopmesh::users::v1::user_service_client::UserServiceClient;
use shopmesh_proto::shopmesh::users::v1::{CreateUserRequest, VerifyCredentialsRequest};
use support::{Answer, PASSWORD, embedded, http};
use tonic::Code;

fn json_body(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// The `google.rpc.Status` reason of an error answer.
fn reason(answer: &Answer) -> String {
    answer.json()["details"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn violated_fields(answer: &Answer) -> Vec<String> {
    let body = answer.json();
    let mut fields: Vec<String> = body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|detail| detail["field_violations"].as_array())
        .flatten()
        .filter_map(|v| v["field"].as_str().map(str::to_owned))
        .collect();
    fields.sort();
    fields
}

#[tokio::test]
async fn identity_over_rest() {
    let (platform, _dir) = embedded().await;
    let edge = platform.edge.clone();
    let register = json_body(serde_json::json!({
        "email": "ada@example.com", "password": PASSWORD, "display_name": "Ada"
    }));
    let created = http(&edge, "POST", "/v1/users", &[], &register).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["roles"], serde_json::json!(["customer"]));
    assert!(created.json().get("password_hash").is_none());
    assert_eq!(created.header("x-content-type-options"), Some("nosniff"));
    let again = http(&edge, "POST", "/v1/users", &[], &register).await;
    assert_eq!(
        (again.status, reason(&again).as_str()),
        (409, "EMAIL_TAKEN")
    );

    let login = http(
        &edge,
        "POST",
        "/v1/auth/login",
        &[],
        &json_body(serde_json::json!({"email": "ada@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(login.status, 200);
    let token = login.json()["access_token"].as_str().unwrap().to_owned();
    let authorization = format!("Bearer {token}");

    let anonymous = http(&edge, "GET", "/v1/users/me", &[], b"").await;
    assert_eq!(
        (anonymous.status, reason(&anonymous).as_str()),
        (401, "TOKEN_MISSING")
    );
    let me = http(
        &edge,
        "GET",
        "/v1/users/me",
        &[("authorization", &authorization)],
        b"",
    )
    .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["email"], "ada@example.com");
    assert_eq!(me.header("cache-control"), Some("no-store"));

    let renamed = http(
        &edge,
        "PATCH",
        "/v1/users/me",
        &[("authorization", &authorization)],
        &json_body(serde_json::json!({"displayName": "Ada Lovelace"})),
    )
    .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    assert_eq!(renamed.json()["display_name"], "Ada Lovelace");

    let forbidden = http(
        &edge,
        "GET",
        "/v1/users",
        &[("authorization", &authorization)],
        b"",
    )
    .await;
    assert_eq!(forbidden.status, 403);
    let jwks = http(&edge, "GET", "/.well-known/jwks.json", &[], b"").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.json()["keys"][0]["kty"], "OKP");
    platform.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_refusals() {
    let (platform, _dir) = embedded().await;
    let edge = platform.edge.clone();
    let malformed = http(&edge, "POST", "/v1/users", &[], br#"{"email": "#).await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    let wrong_type = http(
        &edge,
        "POST",
        "/v1/auth/login",
        &[],
        br#"{"email": "a@b.io", "password": 12345678901}"#,
    )
    .await;
    assert_eq!(
        (wrong_type.status, violated_fields(&wrong_type)),
        (400, vec!["password".to_owned()])
    );
    let missing = http(
        &edge,
        "POST",
        "/v1/users",
        &[],
        &json_body(serde_json::json!({"email": "bo@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (missing.status, violated_fields(&missing)),
        (400, vec!["display_name".to_owned()])
    );

    let huge = vec![b' '; 12 * 1024 * 1024];
    let too_large = http(&edge, "POST", "/v1/users", &[], &huge).await;
    assert_eq!(too_large.status, 413);
    let unknown = http(&edge, "GET", "/v1/nothing-here", &[], b"").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("x-content-type-options"), Some("nosniff"));
    let wrong_method = http(&edge, "DELETE", "/v1/users/me", &[], b"").await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, PATCH"));
    platform.stop().await;
}

#[tokio::test]
async fn repeated_failed_logins_get_429_with_retry_after() {
    let (platform, _dir) = embedded().await;
    let edge = platform.edge.clone();
    let wrong =
        json_body(serde_json::json!({"email": "cy@example.com", "password": "not the password"}));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = http(&edge, "POST", "/v1/auth/login", &[], &wrong).await;
        if answer.status == 429 {
            assert!(
                answer
                    .header("retry-after")
                    .is_some_and(|s| s.parse::<u64>().unwrap() >= 1)
            );
        }
        statuses.push(answer.status);
    }
    assert!(statuses.iter().all(|s| *s < 500), "{statuses:?}");
    assert_eq!(&statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    platform.stop().await;
}

#[tokio::test]
async fn grpc_clients_pass_through_the_edge_but_not_to_internal_methods() {
    let (platform, _dir) = embedded().await;
    let channel = tonic::transport::Channel::from_shared(platform.edge.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut users = UserServiceClient::new(channel);
    let created = users
        .create_user(CreateUserRequest {
            email: "dee@example.com".into(),
            password: PASSWORD.into(),
            display_name: "Dee".into(),
            locale: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.email, "dee@example.com");
    let internal = users
        .verify_credentials(VerifyCredentialsRequest {
            email: "dee@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert_eq!(internal.kind().code(), Code::PermissionDenied, "{internal}");
    platform.stop().await;
}

#[tokio::test]
async fn a_login_flood_from_one_client_is_limited_without_errors() {
    let (platform, _dir) = embedded().await;
    platform.register("eve@example.com").await.unwrap();
    let login = json_body(serde_json::json!({"email": "eve@example.com", "password": PASSWORD}));
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..600 {
        let answer = http(&platform.edge, "POST", "/v1/auth/login", &[], &login).await;
        match answer.status {
            200 => ok += 1,
            429 => {
                assert_eq!(reason(&answer), "RATE_LIMITED");
                assert!(answer.header("retry-after").is_some(), "{answer:?}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert!(ok >= 20, "the burst passes ({ok})");
    assert!(limited >= 500, "the flood is limited ({limited})");
    platform.stop().await;
}

#[tokio::test]
async fn cross_origin_requests_only_from_listed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let platform = support::Platform::start(
        dir.path(),
        &["services.edge.cors.allowed_origins=[\"https://shop.example.com\"]".to_owned()],
    )
    .await;
    let preflight = |origin: &'static str| {
        let edge = platform.edge.clone();
        async move {
            http(
                &edge,
                "OPTIONS",
                "/v1/users/me",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "PATCH"),
                ],
                b"",
            )
            .await
        }
    };
    let listed = preflight("https://shop.example.com").await;
    assert_eq!(listed.status, 204);
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(listed.header("access-control-allow-methods"), Some("PATCH"));
    let unlisted = preflight("https://evil.example.net").await;
    assert_eq!(unlisted.status, 403);
    assert_eq!(unlisted.header("access-control-allow-origin"), None);

    let jwks = http(
        &platform.edge,
        "GET",
        "/.well-known/jwks.json",
        &[("origin", "https://shop.example.com")],
        b"",
    )
    .await;
    assert_eq!(
        jwks.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(jwks.header("vary"), Some("Origin"));
    platform.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_public_route() {
    let (platform, _dir) = embedded().await;
    let answer = http(&platform.edge, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(answer.status, 200);
    let document = answer.json();
    assert_eq!(document["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/users", "post"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/.well-known/jwks.json", "get"),
        ("/v1/products:search", "get"),
    ] {
        let operation = &document["paths"][path][method];
        assert_eq!(
            operation["security"],
            serde_json::json!([]),
            "{method} {path} is public"
        );
    }
    platform.stop().await;
}

#[tokio::test]
async fn https_with_hsts_when_given_a_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let platform = support::Platform::start(
        &dir.path().join("data"),
        &[
            format!("services.edge.tls.cert={:?}", cert),
            format!("services.edge.tls.key={:?}", key),
        ],
    )
    .await;
    let address = platform
        .edge
        .strip_prefix("https://")
        .expect("an https URL");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("strict-transport-security: max-age="),
        "{text}"
    );
    platform.stop().await;
}

#[tokio::test]
async fn declared_headers_are_required_and_bounded() {
    let (platform, _dir) = embedded().await;
    let edge = platform.edge.clone();
    let missing = http(
        &edge,
        "POST",
        "/v1/webhooks/stripe",
        &[],
        br#"{"id":"evt_1"}"#,
    )
    .await;
    assert_eq!(missing.status, 400, "{missing:?}");
    assert_eq!(violated_fields(&missing), ["stripe-signature"]);
    let long = "t=1,v1=".to_owned() + &"a".repeat(3000);
    let too_long = http(
        &edge,
        "POST",
        "/v1/webhooks/stripe",
        &[("stripe-signature", &long)],
        br#"{"id":"evt_1"}"#,
    )
    .await;
    assert_eq!(violated_fields(&too_long), ["stripe-signature"]);
    // With its header the raw body goes on to payments, which checks the signature itself.
    let passed = http(
        &edge,
        "POST",
        "/v1/webhooks/stripe",
        &[("stripe-signature", "t=1,v1=abc")],
        br#"{"id":"evt_1"}"#,
    )
    .await;
    assert_eq!(passed.status, 400, "{passed:?}");
    assert_eq!(passed.json()["details"][0]["reason"], "BAD_SIGNATURE");
    platform.stop().await;
}

#[tokio::test]
async fn oversized_heads_and_stalled_bodies_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let platform = support::Platform::start(
        dir.path(),
        &["services.edge.client_timeout=\"1s\"".to_owned()],
    )
    .await;
    let big = "x".repeat(20 * 1024);
    let too_big = http(
        &platform.edge,
        "GET",
        "/v1/categories",
        &[("x-padding", &big)],
        b"",
    )
    .await;
    assert_eq!(too_big.status, 431);

    // Headers promise 100 bytes of body, 10 arrive, then nothing.
    let address = platform.edge.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the edge gives up on a stalled client");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    platform.stop().await;
}

/// A plain HTTP/1.1 server that answers every request with what it received: the request line,
/// then the headers the edge adds.
async fn echo_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut lines = head.split("\r\n");
                let mut echo = vec![lines.next().unwrap_or_default().to_owned()];
                echo.extend(
                    lines
                        .filter(|line| {
                            let line = line.to_ascii_lowercase();
                            line.starts_with("x-forwarded-for") || line.starts_with("x-request-id")
                        })
                        .map(str::to_owned),
                );
                let body = echo.join("\n");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn forward_routes_proxy_plain_http_with_the_edges_limits_and_headers() {
    let origin = echo_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let route = format!("services.edge.forward=[{{prefix=\"/assets/\", upstream=\"{origin}\"}}]");
    let platform = support::Platform::start(dir.path(), &[route]).await;

    let answer = http(&platform.edge, "GET", "/assets/app.js?v=2", &[], b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let echoed = String::from_utf8_lossy(&answer.body).to_string();
    assert!(
        echoed.starts_with("GET /assets/app.js?v=2 HTTP/1.1"),
        "{echoed}"
    );
    assert!(echoed.contains("x-forwarded-for: 127.0.0.1"), "{echoed}");
    let request_id = answer.header("x-request-id").expect("a request id");
    assert_eq!(request_id.len(), 32, "a fresh id: {request_id:?}");
    assert!(
        echoed.contains(&format!("x-request-id: {request_id}")),
        "{echoed}"
    );
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    // A client's own well-formed id goes through both ways.
    let traced = http(
        &platform.edge,
        "GET",
        "/assets/app.js",
        &[("x-request-id", "client-7")],
        b"",
    )
    .await;
    assert_eq!(traced.header("x-request-id"), Some("client-7"));
    assert!(String::from_utf8_lossy(&traced.body).contains("x-request-id: client-7"));

    // The API stays the edge's own; other paths are still unknown.
    let api = http(&platform.edge, "GET", "/v1/categories", &[], b"").await;
    assert_eq!(api.status, 200, "{api:?}");
    let unknown = http(&platform.edge, "GET", "/asset", &[], b"").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // The body limit (1 MiB by default) holds for forwarded requests too.
    let large = vec![b'x'; 2 * 1024 * 1024];
    let refused = http(&platform.edge, "POST", "/assets/upload", &[], &large).await;
    assert_eq!(refused.status, 413, "{refused:?}");
}

#[tokio::test]
async fn a_request_head_sent_too_slowly_loses_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let settings = ["services.edge.head_timeout=\"1s\"".to_owned()];
    let platform = support::Platform::start(dir.path(), &settings).await;
    let address = platform.edge.trim_start_matches("http://").to_owned();

    // One header line every 300 ms: each read is quick, the whole head is not.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /v1/categories HTTP/1.1\r\nHost: edge\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for n in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if slow
            .write_all(format!("X-Slow-{n}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(read) =
            tokio::time::timeout(std::time::Duration::from_millis(1), slow.read(&mut byte)).await
        {
            closed = matches!(read, Ok(0) | Err(_));
            if closed {
                break;
            }
        }
    }
    assert!(closed, "the slow head kept its connection");
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));

    // A keep-alive connection may idle longer than the limit between two requests.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = b"GET /v1/categories HTTP/1.1\r\nHost: edge\r\n\r\n";
    for _ in 0..2 {
        idle.write_all(request).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = idle.read(&mut answer).await.unwrap();
        assert!(
            answer[..read].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer[..read])
        );
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        // The test client connects from loopback, as a load balancer would from its address.
        "services.edge.trusted_proxies=[\"127.0.0.1/32\"]",
        "services.edge.limits.default.per_ip.per_second=0.01",
        "services.edge.limits.default.per_ip.burst=2",
        "services.edge.limits.default.per_user.per_second=100",
        "services.edge.limits.default.per_user.burst=100",
    ]
    .map(str::to_owned);
    let platform = support::Platform::start(dir.path(), &settings).await;
    let edge = platform.edge.clone();
    let from = |chain: &'static str| [("x-forwarded-for", chain)];
    let mut first = Vec::new();
    for _ in 0..3 {
        let answer = http(&edge, "GET", "/v1/categories", &from("203.0.113.1"), b"").await;
        first.push(answer.status);
    }
    assert_eq!(first, [200, 200, 429], "one client's own allowance");
    // An address the client wrote further left changes nothing: the proxy's is what counts.
    let spoofed = http(
        &edge,
        "GET",
        "/v1/categories",
        &from("6.6.6.6, 203.0.113.1"),
        b"",
    )
    .await;
    assert_eq!(spoofed.status, 429);
    // Another client behind the same proxy is not throttled with the first.
    let other = http(&edge, "GET", "/v1/categories", &from("203.0.113.2"), b"").await;
    assert_eq!(other.status, 200, "{other:?}");
    platform.stop().await;
}
