//! The Stripe gateway against the test bed's stripe-mock (`SHOPMESH_TEST_STRIPE`). stripe-mock
//! answers from fixed fixtures and keeps no state, so these tests check shapes and what is sent:
//! ids, statuses, and the idempotency keys, read by a loopback proxy in front of the mock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shopmesh_kit::Secret;
use shopmesh_payments::StripeConfig;
use shopmesh_payments::gateway::stripe::Stripe;
use shopmesh_payments::gateway::{
    GatewayError, IntentRequest, PaymentGateway, ProviderStatus, RefundRequest, charge_key,
    refund_key,
};
use shopmesh_proto::shopmesh::payments::v1::PaymentProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// Variable naming the test bed's stripe-mock (`http://127.0.0.1:12111`).
const STRIPE_VARIABLE: &str = "SHOPMESH_TEST_STRIPE";

/// Request heads that went through the proxy.
type Heads = Arc<Mutex<Vec<String>>>;

/// A loopback proxy to `upstream` that records each request's head (the client opens one
/// connection per request) and passes bytes through unchanged.
async fn recording_proxy(upstream: &str) -> (String, Heads) {
    let target = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let recorded = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (target, recorded) = (target.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&target).await else {
                    return;
                };
                // Read up to the end of the head (bounded), record it, forward it, then pipe.
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match client.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                recorded
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                if server.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (format!("http://{address}"), heads)
}

fn install_ring() {
    // As every binary's main does: ring is the process's rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn gateway(api_base: &str) -> Stripe {
    Stripe::new(&StripeConfig {
        api_base: api_base.to_owned(),
        secret_key: Secret::new("sk_test_123"),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn sent_with(heads: &Heads, needle: &str) -> bool {
    let needle = needle.to_lowercase();
    heads
        .lock()
        .unwrap()
        .iter()
        .any(|head| head.contains(&needle))
}

#[tokio::test]
async fn charges_reads_and_refunds_against_stripe_mock() {
    let Some(mock) = shopmesh_testkit::testbed::address(STRIPE_VARIABLE, "stripe") else {
        return;
    };
    install_ring();
    let (proxy, heads) = recording_proxy(&mock).await;
    let stripe = gateway(&proxy);
    assert_eq!(stripe.provider(), PaymentProvider::Stripe);

    let order_id = Uuid::now_v7().to_string();
    let payment_id = Uuid::now_v7().to_string();
    let key = charge_key(&order_id, 1);
    let charged = stripe
        .create_and_confirm(&IntentRequest {
            amount_minor: 4200,
            currency: "EUR".into(),
            payment_method: "pm_card_visa".into(),
            idempotency_key: key.clone(),
            order_id: order_id.clone(),
            payment_id: payment_id.clone(),
        })
        .await
        .unwrap();
    assert!(
        charged.provider_payment_id.starts_with("pi_"),
        "{charged:?}"
    );
    assert!(matches!(
        charged.status,
        ProviderStatus::Succeeded | ProviderStatus::Processing | ProviderStatus::Failed { .. }
    ));
    assert_eq!(charged.currency.len(), 3);
    assert!(
        sent_with(&heads, &format!("idempotency-key: {key}")),
        "the charge carries its idempotency key"
    );
    assert!(sent_with(&heads, "post /v1/payment_intents "));
    assert!(sent_with(&heads, "authorization: bearer sk_test_123"));

    let read = stripe.retrieve(&charged.provider_payment_id).await.unwrap();
    assert!(read.provider_payment_id.starts_with("pi_"));
    assert!(sent_with(
        &heads,
        &format!("get /v1/payment_intents/{}", charged.provider_payment_id)
    ));

    let refund_id = Uuid::now_v7().to_string();
    let refund_key = refund_key(&payment_id);
    let refunded = stripe
        .refund(&RefundRequest {
            provider_payment_id: charged.provider_payment_id.clone(),
            amount_minor: 4200,
            currency: "EUR".into(),
            idempotency_key: refund_key.clone(),
            payment_id,
            refund_id,
        })
        .await
        .unwrap();
    assert!(refunded.id.starts_with("re_"), "{refunded:?}");
    assert!(sent_with(&heads, &format!("idempotency-key: {refund_key}")));
    let again = stripe.retrieve_refund(&refunded.id).await.unwrap();
    assert!(again.id.starts_with("re_"));
}

#[tokio::test]
async fn stripes_refusals_and_outages_are_told_apart() {
    let Some(mock) = shopmesh_testkit::testbed::address(STRIPE_VARIABLE, "stripe") else {
        return;
    };
    install_ring();
    let stripe = gateway(&mock);
    // A path Stripe does not know: a request it will never accept.
    match stripe.retrieve("").await {
        Err(GatewayError::Refused { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing listens on the discard port: no answer, worth retrying.
    let closed = gateway("http://127.0.0.1:9");
    match closed.retrieve("pi_123").await {
        Err(GatewayError::Unavailable(_)) => {}
        other => panic!("expected the provider to be unavailable, got {other:?}"),
    }
}

#[test]
fn a_missing_secret_key_is_named() {
    let error = Stripe::new(&StripeConfig::default()).unwrap_err();
    assert!(error.to_string().contains("stripe.secret_key"), "{error}");
}
