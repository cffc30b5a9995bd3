//! Identity end to end through `shopmesh up`: the real binary, its printed addresses and first
//! administrator, and real gRPC clients. The same flows run on the embedded defaults and, with
//! the test bed, on a CQL server and Pulsar.

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shopmesh_kit::Error;
use shopmesh_kit::token::{Claims, SigningKey};
use shopmesh_proto::shopmesh::auth::v1::{GetJwksRequest, LogoutRequest};
use shopmesh_proto::shopmesh::users::v1::{
    CreateUserRequest, GetMeRequest, ListUsersRequest, PasswordChange, SetUserRolesRequest,
    UpdateMeRequest, UserUpdate,
};
use support::{PASSWORD, Platform, assert_refused, bearer, claims, embedded, on_engines};
use tonic::Code;

async fn registration_login_and_profile(platform: Platform) {
    let user = platform.register("ada@example.com").await.unwrap();
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.roles, ["customer"]);
    assert!(user.created_at.is_some());
    assert_refused(
        platform.register("ADA@Example.com").await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );

    let login = platform.login("Ada@example.com", PASSWORD).await.unwrap();
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 900);
    assert_eq!(platform.me(&login.access_token).await.unwrap().id, user.id);
    assert_refused(
        platform
            .users
            .clone()
            .get_me(GetMeRequest {})
            .await
            .map_err(Error::from),
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );

    let updated = platform
        .users
        .clone()
        .update_me(bearer(
            UpdateMeRequest {
                user: Some(UserUpdate {
                    display_name: "Ada Lovelace".into(),
                    phone: "+4930123456".into(),
                    ..UserUpdate::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &login.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Ada Lovelace");
    assert_eq!(updated.phone, "", "fields outside the mask stay unchanged");

    let jwks = platform
        .auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(
        (jwks.keys[0].kty.as_str(), jwks.keys[0].alg.as_str()),
        ("OKP", "EdDSA")
    );
    platform.stop().await;
}

async fn refresh_rotation_and_replay(platform: Platform) {
    platform.register("bob@example.com").await.unwrap();
    let login = platform.login("bob@example.com", PASSWORD).await.unwrap();
    let (access, second) = platform.refresh(&login.refresh_token).await.unwrap();
    assert_ne!(second, login.refresh_token);
    platform.me(&access).await.unwrap();

    // The first token is spent; presenting it again revokes the whole session.
    assert_refused(
        platform.refresh(&login.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    assert_refused(
        platform.refresh(&second).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REVOKED",
    );

    // Logout ends a session; it says nothing about tokens it does not know.
    let other = platform.login("bob@example.com", PASSWORD).await.unwrap();
    for token in [other.refresh_token.as_str(), "no-such-token"] {
        platform
            .auth
            .clone()
            .logout(LogoutRequest {
                refresh_token: token.into(),
            })
            .await
            .unwrap();
    }
    assert_refused(
        platform.refresh(&other.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REVOKED",
    );
    platform.stop().await;
}

async fn a_password_change_ends_every_session(platform: Platform) {
    platform.register("cy@example.com").await.unwrap();
    let first = platform.login("cy@example.com", PASSWORD).await.unwrap();
    let change = |current: &str| UpdateMeRequest {
        user: Some(UserUpdate {
            password: Some(PasswordChange {
                current_password: current.into(),
                new_password: "a new horse battery".into(),
            }),
            ..UserUpdate::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["password".into()],
        }),
    };
    assert_refused(
        platform
            .users
            .clone()
            .update_me(bearer(change("wrong password!"), &first.access_token))
            .await
            .map_err(Error::from),
        Code::PermissionDenied,
        "WRONG_PASSWORD",
    );
    platform
        .users
        .clone()
        .update_me(bearer(change(PASSWORD), &first.access_token))
        .await
        .unwrap();
    // The revocation travels as an event through the outbox: wait for it.
    let revoked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let session = platform
                .login("cy@example.com", "a new horse battery")
                .await
                .unwrap();
            if platform.refresh(&first.refresh_token).await.is_err() {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the old session ends after the password change");
    assert_refused(
        platform.login("cy@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    platform.me(&revoked.access_token).await.unwrap();
    platform.stop().await;
}

#[tokio::test]
async fn embedded_registration_login_and_profile() {
    registration_login_and_profile(embedded().await.0).await;
}

#[tokio::test]
async fn embedded_refresh_rotation_and_replay() {
    refresh_rotation_and_replay(embedded().await.0).await;
}

#[tokio::test]
async fn embedded_password_change_ends_every_session() {
    a_password_change_ends_every_session(embedded().await.0).await;
}

#[tokio::test]
async fn engines_registration_login_and_profile() {
    if let Some((platform, _dir)) = on_engines().await {
        registration_login_and_profile(platform).await;
    }
}

#[tokio::test]
async fn engines_refresh_rotation_and_replay() {
    if let Some((platform, _dir)) = on_engines().await {
        refresh_rotation_and_replay(platform).await;
    }
}

#[tokio::test]
async fn engines_password_change_ends_every_session() {
    if let Some((platform, _dir)) = on_engines().await {
        a_password_change_ends_every_session(platform).await;
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_account_fail_alike_and_are_throttled() {
    let (platform, _dir) = embedded().await;
    platform.register("dee@example.com").await.unwrap();
    let wrong = platform
        .login("dee@example.com", "not the password")
        .await
        .unwrap_err();
    let unknown = platform
        .login("nobody@example.com", "not the password")
        .await
        .unwrap_err();
    assert_eq!(wrong, unknown, "same status, reason and message");
    assert_eq!(wrong.reason(), "INVALID_CREDENTIALS");

    // Five failures in a row are free; the next attempt is blocked, even with the right
    // password, and an unknown account is throttled the same way.
    for email in ["dee@example.com", "nobody@example.com"] {
        for _ in 0..4 {
            let _ = platform.login(email, "not the password").await;
        }
        let blocked = platform.login(email, PASSWORD).await.unwrap_err();
        assert_eq!(blocked.kind().code(), Code::ResourceExhausted, "{blocked}");
        assert_eq!(blocked.reason(), "LOGIN_THROTTLED");
        assert!(
            blocked
                .retry_after()
                .is_some_and(|d| d >= Duration::from_secs(1))
        );
    }
    platform.stop().await;
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused() {
    let (platform, _dir) = embedded().await;
    let user = platform.register("eve@example.com").await.unwrap();
    let login = platform.login("eve@example.com", PASSWORD).await.unwrap();
    let key = platform.signing_key();
    let encode = |value: &serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let header =
        |alg: &str| encode(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": key.kid()}));
    let payload = encode(&serde_json::to_value(claims(&user.id)).unwrap());

    let alg_none = format!("{}.{payload}.", header("none"));
    let public = URL_SAFE_NO_PAD.decode(key.jwk().x).unwrap();
    let hmac_with_public_key = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(key.kid().to_owned()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims(&user.id),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    let unknown_kid = SigningKey::generate("not-a-key-of-ours")
        .sign(&claims(&user.id))
        .unwrap();
    let expired = key
        .sign(&Claims {
            exp: claims("").iat - 3600,
            ..claims(&user.id)
        })
        .unwrap();
    let wrong_audience = key
        .sign(&Claims {
            aud: "someone-else".into(),
            ..claims(&user.id)
        })
        .unwrap();
    let wrong_issuer = key
        .sign(&Claims {
            iss: "someone-else".into(),
            ..claims(&user.id)
        })
        .unwrap();
    let tampered = {
        let parts: Vec<&str> = login.access_token.split('.').collect();
        let mut body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        body["roles"] = serde_json::json!(["admin"]);
        format!("{}.{}.{}", parts[0], encode(&body), parts[2])
    };
    for (name, token, reason) in [
        ("alg none", alg_none.as_str(), "TOKEN_INVALID"),
        (
            "HMAC with the public key",
            &hmac_with_public_key,
            "TOKEN_INVALID",
        ),
        ("unknown kid", &unknown_kid, "TOKEN_UNKNOWN_KEY"),
        ("expired", &expired, "TOKEN_EXPIRED"),
        ("wrong audience", &wrong_audience, "TOKEN_INVALID"),
        ("wrong issuer", &wrong_issuer, "TOKEN_INVALID"),
        ("tampered payload", &tampered, "TOKEN_INVALID"),
        ("garbage", "garbage", "TOKEN_MALFORMED"),
    ] {
        let refused = platform.me(token).await.expect_err(name);
        assert_eq!(
            refused.kind().code(),
            Code::Unauthenticated,
            "{name}: {refused}"
        );
        assert_eq!(refused.reason(), reason, "{name}");
    }
    // A public method still refuses a bad token rather than ignoring it.
    let public_call = platform
        .auth
        .clone()
        .get_jwks(bearer(GetJwksRequest {}, &tampered))
        .await
        .map_err(Error::from);
    assert_refused(public_call, Code::Unauthenticated, "TOKEN_INVALID");
    // The well-signed forgery with correct claims shows the checks above were the refusals.
    platform
        .me(&key.sign(&claims(&user.id)).unwrap())
        .await
        .unwrap();
    platform.stop().await;
}

#[tokio::test]
async fn roles_decide_what_a_caller_may_do() {
    let (platform, _dir) = embedded().await;
    let admin_password = platform
        .admin_password
        .clone()
        .expect("first admin printed");
    let customer = platform.register("fay@example.com").await.unwrap();
    let session = platform.login("fay@example.com", PASSWORD).await.unwrap();
    assert_refused(
        platform
            .users
            .clone()
            .list_users(bearer(ListUsersRequest::default(), &session.access_token))
            .await
            .map_err(Error::from),
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let set_support = |token: &str| {
        bearer(
            SetUserRolesRequest {
                id: customer.id.clone(),
                roles: vec!["customer".into(), "support".into()],
            },
            token,
        )
    };
    assert_refused(
        platform
            .users
            .clone()
            .set_user_roles(set_support(&session.access_token))
            .await
            .map_err(Error::from),
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    let admin = platform
        .login("admin@shopmesh.local", &admin_password)
        .await
        .unwrap();
    for n in 0..3 {
        platform
            .register(&format!("user{n}@example.com"))
            .await
            .unwrap();
    }
    // Pages of two, oldest first, until the last page.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = platform
            .users
            .clone()
            .list_users(bearer(
                ListUsersRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    email: String::new(),
                },
                &admin.access_token,
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.into_iter().map(|u| u.email));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        [
            "admin@shopmesh.local",
            "fay@example.com",
            "user0@example.com",
            "user1@example.com",
            "user2@example.com"
        ]
    );
    let unknown_role = platform
        .users
        .clone()
        .set_user_roles(bearer(
            SetUserRolesRequest {
                id: customer.id.clone(),
                roles: vec!["wizard".into()],
            },
            &admin.access_token,
        ))
        .await
        .map_err(Error::from);
    assert_refused(unknown_role, Code::InvalidArgument, "INVALID_FIELDS");
    let promoted = platform
        .users
        .clone()
        .set_user_roles(set_support(&admin.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.roles, ["customer", "support"]);
    // The old session ends; a new login carries the new role.
    let support = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if platform.refresh(&session.refresh_token).await.is_err() {
                return platform.login("fay@example.com", PASSWORD).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the session ends after the role change");
    platform
        .users
        .clone()
        .list_users(bearer(ListUsersRequest::default(), &support.access_token))
        .await
        .unwrap();
    platform.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_fields() {
    let (platform, _dir) = embedded().await;
    let invalid = platform
        .users
        .clone()
        .create_user(CreateUserRequest {
            email: "not an address".into(),
            password: "short".into(),
            display_name: "x".repeat(101),
            locale: String::new(),
        })
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert_eq!(invalid.kind().code(), Code::InvalidArgument);
    let mut fields: Vec<&str> = invalid
        .violations()
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["display_name", "email", "password"]);

    let common = platform
        .users
        .clone()
        .create_user(CreateUserRequest {
            email: "gus@example.com".into(),
            password: "Password123".into(),
            display_name: "Gus".into(),
            locale: String::new(),
        })
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert_eq!(common.violations()[0].field, "password");
    assert!(common.violations()[0].description.contains("common"));
    platform.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_accounts_keys_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(dir.path(), &[]).await;
    assert!(platform.admin_password.is_some());
    platform.register("hal@example.com").await.unwrap();
    let session = platform.login("hal@example.com", PASSWORD).await.unwrap();
    platform.stop().await;

    let platform = Platform::start(dir.path(), &[]).await;
    assert_eq!(
        platform.admin_password, None,
        "the first admin is created once"
    );
    platform.me(&session.access_token).await.unwrap();
    platform.refresh(&session.refresh_token).await.unwrap();
    platform.login("hal@example.com", PASSWORD).await.unwrap();
    platform.stop().await;
}

#[tokio::test]
async fn no_password_or_token_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(dir.path(), &["log.level=\"debug\"".to_owned()]).await;
    let admin_password = platform.admin_password.clone().unwrap();
    platform.register("ivy@example.com").await.unwrap();
    let session = platform.login("ivy@example.com", PASSWORD).await.unwrap();
    let _ = platform.login("ivy@example.com", "a wrong password").await;
    let (access, refresh) = platform.refresh(&session.refresh_token).await.unwrap();
    let _ = platform.refresh(&session.refresh_token).await;
    let _ = platform.me("an.invalid.token").await;
    let output = platform.stop().await;
    assert!(output.len() > 10, "debug logging produced output");
    let secrets = [
        PASSWORD,
        "a wrong password",
        &session.access_token,
        &session.refresh_token,
        &access,
        &refresh,
        "an.invalid.token",
    ];
    for line in &output {
        for secret in secrets {
            assert!(!line.contains(secret), "a secret in the output: {line}");
        }
        if !line.trim_start().starts_with("first admin") {
            assert!(
                !line.contains(&admin_password),
                "the admin password outside its banner line"
            );
        }
    }
}

/// Runs a `shopmesh` operator command and returns its standard output.
fn shopmesh(args: &[&str]) -> String {
    let output = std::process::Command::new(shopmesh_testkit::binaries::path("shopmesh"))
        .args(args)
        .args(["--set", "log.level=\"warn\""])
        .output()
        .expect("run shopmesh");
    assert!(
        output.status.success(),
        "shopmesh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn operators_create_accounts_and_rotate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let fast_keys = [
        "services.auth.key_reload=\"200ms\"".to_owned(),
        "services.auth.key_activation=\"6s\"".to_owned(),
    ];
    let platform = Platform::start(dir.path(), &fast_keys).await;
    platform.register("jo@example.com").await.unwrap();
    let before = platform.login("jo@example.com", PASSWORD).await.unwrap();
    let old_kid = platform.signing_key().kid().to_owned();

    // A support account made with the operator tool, next to the running platform.
    let created = shopmesh(&[
        "admin",
        "create-user",
        "--email",
        "kim@example.com",
        "--role",
        "support",
        "--data-dir",
        data_dir,
    ]);
    let password = created
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .expect("the password is printed")
        .to_owned();
    let kim = platform.login("kim@example.com", &password).await.unwrap();
    platform
        .users
        .clone()
        .list_users(bearer(ListUsersRequest::default(), &kim.access_token))
        .await
        .unwrap();

    let rotated = shopmesh(&["auth", "rotate-keys", "--data-dir", data_dir]);
    assert!(rotated.starts_with("new signing key "), "{rotated}");
    // Once activated and reloaded, new tokens carry the new key id; both keys are published,
    // and a token signed before the rotation still verifies.
    let kid_of = |token: &str| -> String {
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    assert_eq!(kid_of(&before.access_token), old_kid);
    let rotated_at = std::time::Instant::now();
    let after = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let session = platform.login("jo@example.com", PASSWORD).await.unwrap();
            if kid_of(&session.access_token) != old_kid {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the new key signs after its activation delay");
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(5),
        "the new key signed before its activation delay"
    );
    let jwks = platform
        .auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut kids: Vec<String> = jwks.keys.into_iter().map(|k| k.kid).collect();
    kids.sort();
    let mut expected = vec![old_kid, kid_of(&after.access_token)];
    expected.sort();
    assert_eq!(kids, expected);
    platform.me(&before.access_token).await.unwrap();
    platform.me(&after.access_token).await.unwrap();
    platform.stop().await;
}
