//! Stripe webhooks: the `Stripe-Signature` check and the few fields of an event payments reads.
//!
//! The header is `t=<unix time>,v1=<hex>[,v1=<hex>…][,v0=…]`; each `v1` is HMAC-SHA256 of
//! `"<t>.<raw body>"` under the endpoint's secret. A body is accepted when `t` is within
//! [`TOLERANCE_SECS`] of now (either way, so a replayed old delivery and a forged future one are
//! both refused) and any `v1` matches any configured secret (several secrets let an operator
//! rotate one without refusing deliveries signed with the other). Comparisons are constant-time.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use shopmesh_kit::Secret;

/// How far `t` may be from now, in seconds, as Stripe's libraries allow by default.
pub const TOLERANCE_SECS: i64 = 300;
/// Largest body read; the edge bounds it at the same size already.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Signatures looked at in one header, so a long header costs bounded work.
const MAX_SIGNATURES: usize = 16;
/// Longest event id and type accepted (Stripe's are far shorter).
const MAX_ID: usize = 255;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused. The messages say what was wrong without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature timestamp is more than {TOLERANCE_SECS} s from now")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
    #[error("no webhook secret is configured")]
    NoSecret,
}

/// The parts of a `Stripe-Signature` header payments uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<Header, SignatureError> {
    let header = header.trim();
    if header.is_empty() {
        return Err(SignatureError::Missing);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(SignatureError::Malformed("an item is not key=value"));
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t"));
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t is not a number"))?,
                );
            }
            // A value that is not hex can never match; skipping it keeps the others usable.
            "v1" if signatures.len() < MAX_SIGNATURES => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            // v0 (test-mode legacy) and unknown schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    Ok(Header {
        timestamp,
        signatures,
    })
}

fn mac(secret: &Secret, timestamp: i64, payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Checks `header` over `payload` against `secrets` at `now` (Unix seconds).
pub fn verify(
    header: &str,
    payload: &[u8],
    secrets: &[Secret],
    now: i64,
) -> Result<(), SignatureError> {
    let header = parse(header)?;
    if secrets.iter().all(Secret::is_empty) {
        return Err(SignatureError::NoSecret);
    }
    if header.timestamp.abs_diff(now) > TOLERANCE_SECS as u64 {
        return Err(SignatureError::Stale);
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let expected = mac(secret, header.timestamp, payload);
        for signature in &header.signatures {
            // `verify_slice` compares in constant time.
            if expected.clone().verify_slice(signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// A `Stripe-Signature` header for `payload` signed with `secret` at `timestamp`, as Stripe
/// sends it (the sandbox signs its events with it).
pub fn sign(payload: &[u8], secret: &Secret, timestamp: i64) -> String {
    let signature = mac(secret, timestamp, payload).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(signature))
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    shopmesh_kit::clock::now_ms().div_euclid(1000)
}

/// A Stripe event, reduced to what payments acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    pub id: String,
    pub kind: String,
    /// `data.object`.
    pub object: Value,
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: Value,
}

/// Why a signed body could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the body is not a Stripe event: {0}")]
pub struct EventError(String);

/// Reads a (verified) body as a Stripe event.
pub fn parse_event(payload: &[u8]) -> Result<StripeEvent, EventError> {
    if payload.len() > MAX_BODY_BYTES {
        return Err(EventError(format!("over {MAX_BODY_BYTES} bytes")));
    }
    let raw: RawEvent = serde_json::from_slice(payload).map_err(|e| EventError(e.to_string()))?;
    if raw.id.is_empty() || raw.id.len() > MAX_ID || raw.kind.is_empty() || raw.kind.len() > MAX_ID
    {
        return Err(EventError("id or type missing or too long".into()));
    }
    if !raw.data.object.is_object() {
        return Err(EventError("data.object is not an object".into()));
    }
    Ok(StripeEvent {
        id: raw.id,
        kind: raw.kind,
        object: raw.data.object,
    })
}

/// What an event is about, as far as payments cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A PaymentIntent changed: re-fetch it and settle.
    Intent {
        provider_payment_id: String,
        /// The payment id in the intent's metadata, when the event carries it.
        payment_id: Option<String>,
    },
    /// Refunds changed: re-fetch the ones named (and the charge's intent's refund).
    Refunds {
        provider_refund_ids: Vec<String>,
        provider_payment_id: Option<String>,
    },
    /// Anything else: acknowledged without effect.
    Other,
}

/// Event types that report a PaymentIntent's outcome or progress.
const INTENT_EVENTS: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.canceled",
];
/// Event types that report a refund's progress (`charge.refunded` carries the charge).
const REFUND_EVENTS: &[&str] = &[
    "charge.refunded",
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
];

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID => Some(s.clone()),
        // An expanded object: its id.
        Some(Value::Object(object)) => match object.get("id") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl StripeEvent {
    /// What this event is about.
    pub fn subject(&self) -> Subject {
        let object = &self.object;
        if INTENT_EVENTS.contains(&self.kind.as_str()) {
            return match text(object, "id") {
                Some(provider_payment_id) => Subject::Intent {
                    provider_payment_id,
                    payment_id: object.get("metadata").and_then(|m| text(m, "payment_id")),
                },
                None => Subject::Other,
            };
        }
        if REFUND_EVENTS.contains(&self.kind.as_str()) {
            let kind = object.get("object").and_then(Value::as_str);
            let (provider_refund_ids, provider_payment_id) = match kind {
                Some("refund") => (
                    text(object, "id").into_iter().collect(),
                    text(object, "payment_intent"),
                ),
                Some("charge") => {
                    let listed = object
                        .get("refunds")
                        .and_then(|r| r.get("data"))
                        .and_then(Value::as_array)
                        .map(|refunds| {
                            refunds
                                .iter()
                                .take(MAX_SIGNATURES)
                                .filter_map(|r| text(r, "id"))
                                .collect()
                        })
                        .unwrap_or_default();
                    (listed, text(object, "payment_intent"))
                }
                _ => return Subject::Other,
            };
            return Subject::Refunds {
                provider_refund_ids,
                provider_payment_id,
            };
        }
        Subject::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent"}}}"#;

    fn secret(text: &str) -> Secret {
        Secret::new(text)
    }

    #[test]
    fn a_valid_signature_is_accepted() {
        let s = secret("whsec_test");
        let header = sign(BODY, &s, NOW);
        assert_eq!(verify(&header, BODY, &[s], NOW), Ok(()));
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let s = secret("whsec_test");
        let header = sign(BODY, &s, NOW);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&header, &tampered, &[s], NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let header = sign(BODY, &secret("whsec_other"), NOW);
        assert_eq!(
            verify(&header, BODY, &[secret("whsec_test")], NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_beyond_the_tolerance() {
        let s = secret("whsec_test");
        let old = sign(BODY, &s, NOW - TOLERANCE_SECS - 1);
        assert_eq!(
            verify(&old, BODY, std::slice::from_ref(&s), NOW),
            Err(SignatureError::Stale)
        );
        let future = sign(BODY, &s, NOW + TOLERANCE_SECS + 1);
        assert_eq!(
            verify(&future, BODY, std::slice::from_ref(&s), NOW),
            Err(SignatureError::Stale)
        );
        // At the edge of the window both ways it still passes.
        let edge = sign(BODY, &s, NOW - TOLERANCE_SECS);
        assert_eq!(verify(&edge, BODY, std::slice::from_ref(&s), NOW), Ok(()));
        let edge = sign(BODY, &s, NOW + TOLERANCE_SECS);
        assert_eq!(verify(&edge, BODY, &[s], NOW), Ok(()));
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let s = secret("whsec_test");
        let good = sign(BODY, &s, NOW);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let header = format!(
            "t={NOW},v1={},v1=nothex,v0={},v1={good_v1}",
            "00".repeat(32),
            "11".repeat(32)
        );
        assert_eq!(verify(&header, BODY, &[s], NOW), Ok(()));
    }

    #[test]
    fn any_secret_of_a_rotation_list_may_match() {
        let old = secret("whsec_old");
        let new = secret("whsec_new");
        let secrets = [new.clone(), old.clone()];
        assert_eq!(verify(&sign(BODY, &old, NOW), BODY, &secrets, NOW), Ok(()));
        assert_eq!(verify(&sign(BODY, &new, NOW), BODY, &secrets, NOW), Ok(()));
        assert_eq!(
            verify(&sign(BODY, &secret("whsec_gone"), NOW), BODY, &secrets, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let s = [secret("whsec_test")];
        assert_eq!(verify("", BODY, &s, NOW), Err(SignatureError::Missing));
        for header in [
            "v1=00",
            "t=abc,v1=00",
            &format!("t={NOW}"),
            &format!("t={NOW},v0=00"),
            &format!("t={NOW},t={NOW},v1=00"),
            "garbage",
        ] {
            assert!(
                matches!(
                    verify(header, BODY, &s, NOW),
                    Err(SignatureError::Malformed(_))
                ),
                "{header}"
            );
        }
        // Without a secret nothing is accepted.
        let header = sign(BODY, &s[0], NOW);
        assert_eq!(
            verify(&header, BODY, &[Secret::default()], NOW),
            Err(SignatureError::NoSecret)
        );
    }

    #[test]
    fn events_name_their_subject() {
        let event = parse_event(BODY).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(
            event.subject(),
            Subject::Intent {
                provider_payment_id: "pi_1".into(),
                payment_id: None
            }
        );
        let refunded = parse_event(
            br#"{"id":"evt_2","type":"charge.refunded","data":{"object":{"id":"ch_1","object":"charge",
                "payment_intent":"pi_1","refunds":{"data":[{"id":"re_1","object":"refund"}]}}}}"#,
        )
        .unwrap();
        assert_eq!(
            refunded.subject(),
            Subject::Refunds {
                provider_refund_ids: vec!["re_1".into()],
                provider_payment_id: Some("pi_1".into())
            }
        );
        let other = parse_event(
            br#"{"id":"evt_3","type":"customer.created","data":{"object":{"id":"cus_1"}}}"#,
        )
        .unwrap();
        assert_eq!(other.subject(), Subject::Other);
        assert!(parse_event(b"not json").is_err());
        assert!(parse_event(br#"{"id":"","type":"x","data":{"object":{}}}"#).is_err());
        assert!(parse_event(br#"{"id":"e","type":"x","data":{"object":3}}"#).is_err());
    }
}
