//! Access token costs: signing, and verifying with the key already cached (the steady state of
//! every request a service serves). Single thread.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use shopmesh_kit::token::{Claims, Policy, SigningKey, Verifier};

fn claims() -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64;
    Claims {
        iss: "shopmesh".into(),
        aud: "shopmesh".into(),
        sub: "0190a3c2-7e1f-7c3a-9d2e-4b5f6a7b8c9d".into(),
        exp: now + 3600,
        iat: now,
        nbf: now,
        jti: "0190a3c2-8a4b-7d1e-b2c3-d4e5f6a7b8c9".into(),
        roles: vec!["customer".into()],
    }
}

fn token(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let key = SigningKey::generate("bench");
    let claims = claims();
    let verifier = Verifier::new(Arc::new(vec![key.jwk()]), Policy::default());
    let token = key.sign(&claims).expect("signing works");
    // Warm the cache: the one fetch happens here, not in the measured loop.
    runtime
        .block_on(verifier.verify(&token))
        .expect("the token verifies");

    c.bench_function("token/verify (warm cache)", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.verify(black_box(&token)))
                .expect("the token verifies")
        })
    });
    // Baseline: jsonwebtoken alone with a ready key, no cache lookup and no claim policy.
    let decoding = jsonwebtoken::DecodingKey::from_jwk(
        &serde_json::from_value(serde_json::to_value(key.jwk()).expect("a JWK"))
            .expect("jsonwebtoken reads our JWK"),
    )
    .expect("a decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["shopmesh"]);
    c.bench_function("token/verify (jsonwebtoken alone, baseline)", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Claims>(black_box(&token), &decoding, &validation)
                .expect("the token verifies")
        })
    });
    c.bench_function("token/sign", |b| {
        b.iter(|| key.sign(black_box(&claims)).expect("signing works"))
    });
}

criterion_group!(benches, token);
criterion_main!(benches);
