//! Access tokens: JWTs signed with EdDSA (Ed25519), as the auth service issues them and every
//! other service verifies them.
//!
//! [`SigningKey`] holds a private key and signs [`Claims`]; its public half travels as a [`Jwk`].
//! [`Verifier`] checks tokens against public keys it fetches from a [`KeySource`] (the auth service
//! over gRPC in production) and caches by key id.
//!
//! What a verifier accepts is deliberately narrow:
//!
//! - at most [`MAX_TOKEN_LEN`] bytes, checked before anything is parsed;
//! - a header whose `alg` is exactly `EdDSA` and that names a `kid`. The algorithm never comes
//!   from the token: the header's `alg` must equal the one algorithm every cached key is for, and
//!   that is checked before a key is looked up, so `alg: none` and HMAC-with-the-public-key
//!   confusion never reach a signature check. A `crit` header is refused (RFC 7515 §4.1.11: we
//!   understand no extension);
//! - a signature by the key the `kid` names;
//! - `iss` and `aud` equal to the [`Policy`], `exp` and `nbf` in force within the policy's leeway,
//!   and every claim of [`Claims`] present.
//!
//! Keys are cached for [`KEY_TTL`], so a retired key drops out even if nothing asks for it again,
//! and keys the source stops listing are dropped at the next fetch. An unknown `kid` triggers a
//! fetch, but never two within the refetch floor, so a flood of tokens naming random key ids
//! cannot hammer the key source. The auth service should therefore publish a new key before it
//! signs with it.
//!
//! Nothing here puts a token, or any part of one, into an error message.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use moka::future::Cache;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Secret;
use crate::error::Error;

/// The largest token a verifier looks at, in bytes; anything longer is refused unparsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How long a fetched public key stays cached without being fetched again.
pub const KEY_TTL: Duration = Duration::from_secs(10 * 60);

/// The default minimum time between two key fetches triggered by unknown key ids.
pub const DEFAULT_REFETCH_FLOOR: Duration = Duration::from_secs(5);

/// How long one key fetch may take before the verifier gives up on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many keys are cached; a key source lists a handful (current, next, retiring).
const MAX_CACHED_KEYS: u64 = 256;

/// The JOSE name of the only algorithm issued and accepted.
const ALG: &str = "EdDSA";

/// Claims of a shopmesh access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: who signed the token (`shopmesh`).
    pub iss: String,
    /// Audience: who the token is for (`shopmesh`).
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: i64,
    /// Not before, in seconds since the Unix epoch.
    pub nbf: i64,
    /// Token id, unique per token (for revocation lists and logs).
    pub jti: String,
    /// The subject's roles.
    pub roles: Vec<String>,
}

/// One public key as a JWK (RFC 7517 / RFC 8037), e.g.
/// `{"kty":"OKP","crv":"Ed25519","x":"…","kid":"…","alg":"EdDSA","use":"sig"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`.
    pub kty: String,
    /// Curve: `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding (43 characters).
    pub x: String,
    /// Key id, as tokens name it in their header.
    pub kid: String,
    /// Algorithm: `EdDSA`.
    pub alg: String,
    /// Public key use: `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// Why a token was refused, or why signing or loading a key failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT of the shape we issue (size, segments, encoding, header).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names a key id the key source does not list (the id is kept for logs).
    #[error("token signed by an unknown key")]
    UnknownKey(String),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    /// Well-formed but refused: algorithm, signature, issuer, audience or claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key source could not be reached or gave no usable keys.
    #[error("token keys unavailable: {0}")]
    KeysUnavailable(String),
    /// A private key could not be loaded or used.
    #[error("token key error: {0}")]
    Key(String),
}

impl From<TokenError> for Error {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Malformed(reason) => Error::unauthenticated(
                "TOKEN_MALFORMED",
                format!("malformed access token: {reason}"),
            ),
            TokenError::UnknownKey(_) => {
                Error::unauthenticated("TOKEN_UNKNOWN_KEY", "access token signed by an unknown key")
            }
            TokenError::Expired => Error::unauthenticated("TOKEN_EXPIRED", "access token expired"),
            TokenError::NotYetValid => {
                Error::unauthenticated("TOKEN_INVALID", "access token not yet valid")
            }
            TokenError::Invalid(reason) => {
                Error::unauthenticated("TOKEN_INVALID", format!("invalid access token: {reason}"))
            }
            TokenError::KeysUnavailable(cause) => {
                // The cause may name internal addresses: logged here, not sent.
                tracing::warn!(error = %cause, "token verification keys unavailable");
                Error::unavailable(
                    "AUTH_KEYS_UNAVAILABLE",
                    "token verification keys are unavailable",
                )
            }
            TokenError::Key(cause) => Error::internal("token signing key", cause),
        }
    }
}

impl From<TokenError> for tonic::Status {
    fn from(error: TokenError) -> Self {
        Error::from(error).into()
    }
}

/// A private Ed25519 signing key with its key id. Its `Debug` shows the key id and the public
/// key only.
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    /// The same key as jsonwebtoken wants it (PKCS#8 DER; zeroized on drop).
    encoding: EncodingKey,
    /// `{"alg":"EdDSA","typ":"JWT","kid":…}`, built once.
    header: Header,
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If `kid` is empty (a key id is a constant or a generated id at every call site), or if the
    /// operating system cannot provide randomness.
    pub fn generate(kid: impl Into<String>) -> Self {
        let kid = kid.into();
        assert!(!kid.is_empty(), "a signing key needs a non-empty kid");
        let mut secret = ed25519_dalek::SecretKey::default();
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .expect("the operating system's random source failed");
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        Self::new(kid, key).expect("an Ed25519 key always encodes as PKCS#8")
    }

    /// Loads a stored key: PKCS#8 (RFC 8410) as DER, or as PEM (`-----BEGIN PRIVATE KEY-----`,
    /// what [`SigningKey::to_pkcs8`] and `openssl genpkey -algorithm ed25519` write). Both the
    /// v1 form (seed only, OpenSSL's) and the v2 form (seed and public key) load.
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8: &[u8]) -> Result<Self, TokenError> {
        let kid = kid.into();
        if kid.is_empty() {
            return Err(TokenError::Key(
                "a signing key needs a non-empty kid".into(),
            ));
        }
        let trimmed = pkcs8.trim_ascii();
        let key = if trimmed.starts_with(b"-----BEGIN") {
            let pem = std::str::from_utf8(trimmed)
                .map_err(|_| TokenError::Key("PKCS#8 PEM is not UTF-8".into()))?;
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
        } else {
            ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8)
        }
        .map_err(|error| TokenError::Key(format!("not an Ed25519 PKCS#8 private key: {error}")))?;
        Self::new(kid, key)
    }

    fn new(kid: String, key: ed25519_dalek::SigningKey) -> Result<Self, TokenError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|error| TokenError::Key(format!("cannot encode the key: {error}")))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            key,
            header,
        })
    }

    /// The key as PKCS#8 v2 PEM (`-----BEGIN PRIVATE KEY-----`), for storing; the caller encrypts
    /// it. [`SigningKey::from_pkcs8`] reads it back from `expose().as_bytes()`.
    ///
    /// PEM rather than DER bytes because [`Secret`] holds a string.
    pub fn to_pkcs8(&self) -> Secret {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes as PKCS#8");
        Secret::new(pem.as_str())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, as the key source publishes it.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: ALG.into(),
            use_: "sig".into(),
        }
    }

    /// Signs `claims` as a compact JWT with header `{"alg":"EdDSA","typ":"JWT","kid":…}`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&self.header, claims, &self.encoding)
            .map_err(|error| TokenError::Key(format!("cannot sign a token: {error}")))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field(
                "public",
                &URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The only accepted `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds count).
    pub leeway: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            issuer: "shopmesh".into(),
            audience: "shopmesh".into(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// Where a verifier gets public keys from (the auth service over gRPC in production; a fixed
/// list in tests).
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// Every key currently valid for verification. A key missing from the answer is retired.
    async fn fetch(&self) -> Result<Vec<Jwk>, TokenError>;
}

/// A fixed list of keys.
#[async_trait::async_trait]
impl KeySource for Vec<Jwk> {
    async fn fetch(&self) -> Result<Vec<Jwk>, TokenError> {
        Ok(self.clone())
    }
}

/// Verifies access tokens: EdDSA only, `kid` required, `iss`/`aud`/`exp`/`nbf` checked. Cloning
/// is cheap and clones share the key cache.
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
    refetch_floor: Duration,
}

struct Shared {
    source: Arc<dyn KeySource>,
    policy: Policy,
    validation: Validation,
    /// kid → key; only keys the source listed are ever inserted.
    keys: Cache<String, Arc<DecodingKey>>,
    /// Held for the whole of a fetch, so concurrent misses share one.
    fetch: Mutex<FetchState>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// Why the last attempt failed, if it did.
    failure: Option<String>,
}

impl Verifier {
    pub fn new(source: Arc<dyn KeySource>, policy: Policy) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.leeway = policy.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        let keys = Cache::builder()
            .max_capacity(MAX_CACHED_KEYS)
            .time_to_live(KEY_TTL)
            .build();
        Self {
            shared: Arc::new(Shared {
                source,
                policy,
                validation,
                keys,
                fetch: Mutex::new(FetchState::default()),
            }),
            refetch_floor: DEFAULT_REFETCH_FLOOR,
        }
    }

    /// Minimum time between two key fetches triggered by unknown kids (default 5 s), so a flood
    /// of tokens with random kids cannot hammer the key source.
    pub fn with_refetch_floor(mut self, floor: Duration) -> Self {
        self.refetch_floor = floor;
        self
    }

    /// The claims of `token` if it passes every check.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("longer than 8 KiB".into()));
        }
        let kid = read_header(token)?;
        let key = self.key(&kid).await?;
        decode(token, &key, &self.shared.validation)
    }

    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, TokenError> {
        match self.shared.keys.get(kid).await {
            Some(key) => Ok(key),
            None => self.refetch(kid).await,
        }
    }

    /// Fetches the keys for a `kid` the cache lacks, at most once per refetch floor.
    async fn refetch(&self, kid: &str) -> Result<Arc<DecodingKey>, TokenError> {
        let mut state = self.shared.fetch.lock().await;
        // A verification that held the lock before this one may have fetched the key.
        if let Some(key) = self.shared.keys.get(kid).await {
            return Ok(key);
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.refetch_floor
        {
            return Err(match &state.failure {
                Some(failure) => TokenError::KeysUnavailable(failure.clone()),
                None => TokenError::UnknownKey(kid.to_owned()),
            });
        }
        state.last_attempt = Some(Instant::now());
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.shared.source.fetch()).await {
            Ok(Ok(jwks)) if jwks.is_empty() => Err("the key source listed no keys".to_owned()),
            Ok(Ok(jwks)) => Ok(jwks),
            Ok(Err(TokenError::KeysUnavailable(cause))) => Err(cause),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "the key source did not answer in {FETCH_TIMEOUT:?}"
            )),
        };
        match fetched {
            Ok(jwks) => {
                state.failure = None;
                self.install(jwks).await;
            }
            Err(failure) => {
                // Keys already cached stay until their time to live runs out.
                state.failure = Some(failure.clone());
                return Err(TokenError::KeysUnavailable(failure));
            }
        }
        self.shared
            .keys
            .get(kid)
            .await
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))
    }

    /// Caches every usable key of a fetch and drops cached keys the source no longer lists.
    async fn install(&self, jwks: Vec<Jwk>) {
        let mut listed = HashSet::with_capacity(jwks.len());
        for jwk in jwks {
            match decoding_key(&jwk) {
                Ok(key) => {
                    self.shared
                        .keys
                        .insert(jwk.kid.clone(), Arc::new(key))
                        .await;
                    listed.insert(jwk.kid);
                }
                Err(reason) => {
                    tracing::warn!(kid = %jwk.kid, reason, "ignoring an unusable public key")
                }
            }
        }
        let retired: Vec<Arc<String>> = self
            .shared
            .keys
            .iter()
            .map(|(kid, _)| kid)
            .filter(|kid| !listed.contains(kid.as_str()))
            .collect();
        for kid in retired {
            self.shared.keys.invalidate(kid.as_str()).await;
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.shared.policy)
            .field("refetch_floor", &self.refetch_floor)
            .finish_non_exhaustive()
    }
}

/// The parts of a JOSE header the verifier decides on before it touches a key.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Checks the token's shape and header; returns its `kid`.
fn read_header(token: &str) -> Result<String, TokenError> {
    let malformed = |reason: &str| TokenError::Malformed(reason.to_owned());
    let mut segments = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(malformed("not three dot-separated segments"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: JoseHeader =
        serde_json::from_slice(&header).map_err(|_| malformed("header is not a JOSE header"))?;
    if header.alg != ALG {
        return Err(TokenError::Invalid("only EdDSA is accepted".into()));
    }
    if header.crit.is_some() {
        return Err(TokenError::Invalid(
            "critical header extensions are not supported".into(),
        ));
    }
    match header.kid {
        Some(kid) if !kid.is_empty() => Ok(kid),
        _ => Err(malformed("header names no kid")),
    }
}

/// A verification key for `jwk`, if it is an Ed25519 signing key of ours.
fn decoding_key(jwk: &Jwk) -> Result<DecodingKey, &'static str> {
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return Err("not an Ed25519 key");
    }
    if jwk.alg != ALG {
        return Err("not an EdDSA key");
    }
    if jwk.use_ != "sig" {
        return Err("not a signature key");
    }
    if jwk.kid.is_empty() {
        return Err("no kid");
    }
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&jwk.x)
        .ok()
        .and_then(|x| x.try_into().ok())
        .ok_or("x is not 32 bytes of base64url")?;
    let point = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "x is not a point on Ed25519")?;
    if point.is_weak() {
        return Err("x is a weak (small-order) key");
    }
    DecodingKey::from_ed_components(&jwk.x).map_err(|_| "x is not base64url")
}

/// Verifies the signature and claims. Errors are named by kind only: the library's messages can
/// quote the payload.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, TokenError> {
    let error = match jsonwebtoken::decode::<Claims>(token, key, validation) {
        Ok(data) => return Ok(data.claims),
        Err(error) => error.into_kind(),
    };
    let invalid = |reason: &str| TokenError::Invalid(reason.to_owned());
    Err(match error {
        JwtErrorKind::ExpiredSignature => TokenError::Expired,
        JwtErrorKind::ImmatureSignature => TokenError::NotYetValid,
        JwtErrorKind::InvalidSignature => invalid("signature does not verify"),
        JwtErrorKind::InvalidIssuer => invalid("wrong issuer"),
        JwtErrorKind::InvalidAudience => invalid("wrong audience"),
        // The claim names come from our own list, never from the token.
        JwtErrorKind::MissingRequiredClaim(claim) => invalid(&format!("missing claim {claim}")),
        JwtErrorKind::InvalidClaimFormat(claim) => {
            invalid(&format!("claim {claim} is not a valid time"))
        }
        JwtErrorKind::Json(_) => invalid("claims are not those of an access token"),
        JwtErrorKind::InvalidAlgorithm
        | JwtErrorKind::UnsupportedAlgorithm
        | JwtErrorKind::MissingAlgorithm => invalid("only EdDSA is accepted"),
        JwtErrorKind::InvalidToken | JwtErrorKind::Base64(_) | JwtErrorKind::Utf8(_) => {
            TokenError::Malformed("not a compact JWT".into())
        }
        JwtErrorKind::InvalidEddsaKey | JwtErrorKind::InvalidKeyFormat => {
            TokenError::Key("a cached verification key is unusable".into())
        }
        _ => invalid("rejected"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::error::ErrorKind;

    /// A key source over a list the test changes, counting fetches.
    #[derive(Default)]
    struct TestKeys {
        keys: StdMutex<Vec<Jwk>>,
        fetches: AtomicUsize,
        failing: StdMutex<Option<String>>,
    }

    impl TestKeys {
        fn with(keys: &[&SigningKey]) -> Arc<Self> {
            let source = Arc::new(Self::default());
            for key in keys {
                source.add(key);
            }
            source
        }

        fn add(&self, key: &SigningKey) {
            self.keys.lock().unwrap().push(key.jwk());
        }

        fn set(&self, keys: Vec<Jwk>) {
            *self.keys.lock().unwrap() = keys;
        }

        fn fail(&self, cause: Option<&str>) {
            *self.failing.lock().unwrap() = cause.map(str::to_owned);
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl KeySource for TestKeys {
        async fn fetch(&self) -> Result<Vec<Jwk>, TokenError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            // Let concurrent verifications pile up behind this fetch.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(cause) = self.failing.lock().unwrap().clone() {
                return Err(TokenError::KeysUnavailable(cause));
            }
            Ok(self.keys.lock().unwrap().clone())
        }
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims() -> Claims {
        let now = now();
        Claims {
            iss: "shopmesh".into(),
            aud: "shopmesh".into(),
            sub: "user-42".into(),
            exp: now + 900,
            iat: now,
            nbf: now,
            jti: "0190a3c2-7e1f-7c3a-9d2e-4b5f6a7b8c9d".into(),
            roles: vec!["customer".into()],
        }
    }

    /// A key `k1`, a source listing it and a verifier with the default policy.
    fn setup() -> (SigningKey, Arc<TestKeys>, Verifier) {
        let key = SigningKey::generate("k1");
        let source = TestKeys::with(&[&key]);
        let verifier = Verifier::new(source.clone(), Policy::default());
        (key, source, verifier)
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn a_signed_token_verifies_to_its_claims() {
        let (key, source, verifier) = setup();
        let claims = claims();
        let token = key.sign(&claims).unwrap();

        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&segments(&token)[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], "k1");

        assert_eq!(verifier.verify(&token).await, Ok(claims.clone()));
        assert_eq!(verifier.clone().verify(&token).await, Ok(claims));
        assert_eq!(source.fetches(), 1, "the second verify uses the cache");
    }

    #[test]
    fn the_jwk_is_an_ed25519_okp_key() {
        let key = SigningKey::generate("k1");
        let jwk = key.jwk();
        assert_eq!(
            (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
            ("OKP", "Ed25519", "EdDSA")
        );
        assert_eq!((jwk.kid.as_str(), jwk.use_.as_str()), ("k1", "sig"));
        assert_eq!(jwk.x.len(), 43);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&jwk.x).unwrap(),
            key.key.verifying_key().as_bytes()
        );
        let json = serde_json::to_value(&jwk).unwrap();
        assert_eq!(json["use"], "sig");
        assert_eq!(serde_json::from_value::<Jwk>(json).unwrap(), jwk);
        assert_ne!(SigningKey::generate("k1").jwk().x, jwk.x, "keys are random");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = SigningKey::generate("k1");
        let debug = format!("{key:?}");
        let pem = key.to_pkcs8();
        let body: String = pem
            .expose()
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        assert!(debug.contains("k1"), "{debug}");
        assert!(!debug.contains(&body), "{debug}");
        assert!(!debug.contains(&b64(key.key.to_bytes())), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", key.key.to_bytes())),
            "{debug}"
        );
        assert_eq!(format!("{pem:?}"), "<redacted>");
    }

    #[tokio::test]
    async fn a_key_survives_pkcs8() {
        let key = SigningKey::generate("k1");
        let stored = key.to_pkcs8();
        assert!(stored.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
        let loaded = SigningKey::from_pkcs8("k1", stored.expose().as_bytes()).unwrap();
        assert_eq!(loaded.jwk(), key.jwk());

        // What the loaded key signs verifies against the original's public key.
        let verifier = Verifier::new(Arc::new(vec![key.jwk()]), Policy::default());
        let token = loaded.sign(&claims()).unwrap();
        assert_eq!(verifier.verify(&token).await, Ok(claims_of(&token)));

        // DER, in the v1 form OpenSSL writes (RFC 8410 §7: seed only).
        let mut v1 = hex("302e020100300506032b657004220420");
        v1.extend_from_slice(&key.key.to_bytes());
        let loaded = SigningKey::from_pkcs8("k1", &v1).unwrap();
        assert_eq!(loaded.jwk(), key.jwk());
        // And the v2 DER form (seed and public key).
        let v2 = key.key.to_pkcs8_der().unwrap();
        assert_eq!(
            SigningKey::from_pkcs8("k1", v2.as_bytes()).unwrap().jwk(),
            key.jwk()
        );

        assert!(matches!(
            SigningKey::from_pkcs8("k1", b"not a key"),
            Err(TokenError::Key(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8("", &v1),
            Err(TokenError::Key(_))
        ));
    }

    fn claims_of(token: &str) -> Claims {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&segments(token)[1]).unwrap()).unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let (key, _, verifier) = setup();
        let genuine = segments(&key.sign(&claims()).unwrap());
        let header = b64(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let token = format!("{header}.{}.", genuine[1]);
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::Invalid("only EdDSA is accepted".into()))
        );
        // Case games do not help either.
        let header = b64(r#"{"alg":"eddsa","typ":"JWT","kid":"k1"}"#);
        let token = format!("{header}.{}.{}", genuine[1], genuine[2]);
        assert!(matches!(
            verifier.verify(&token).await,
            Err(TokenError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn hmac_with_the_public_key_as_secret_is_refused() {
        let (key, _, verifier) = setup();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let public = key.jwk();
        let secrets = [
            key.key.verifying_key().to_bytes().to_vec(),
            public.x.as_bytes().to_vec(),
            serde_json::to_vec(&public).unwrap(),
        ];
        for secret in secrets {
            let token =
                jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret))
                    .unwrap();
            assert_eq!(
                verifier.verify(&token).await,
                Err(TokenError::Invalid("only EdDSA is accepted".into()))
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_is_refused() {
        let (_, _, verifier) = setup();
        let stranger = SigningKey::generate("k9");
        let token = stranger.sign(&claims()).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::UnknownKey("k9".into()))
        );
    }

    #[tokio::test]
    async fn a_missing_kid_is_refused() {
        let (key, _, verifier) = setup();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims(), &key.encoding).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::Malformed("header names no kid".into()))
        );
    }

    #[tokio::test]
    async fn a_critical_header_is_refused() {
        let (key, _, verifier) = setup();
        let mut header = key.header.clone();
        header.crit = Some(vec!["exp".into()]);
        let token = jsonwebtoken::encode(&header, &claims(), &key.encoding).unwrap();
        assert!(matches!(
            verifier.verify(&token).await,
            Err(TokenError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_beyond_the_leeway() {
        let (key, _, verifier) = setup();
        let mut expired = claims();
        expired.exp = now() - 120;
        let token = key.sign(&expired).unwrap();
        assert_eq!(verifier.verify(&token).await, Err(TokenError::Expired));

        // Within the 30 s leeway it still passes.
        let mut late = claims();
        late.exp = now() - 5;
        let token = key.sign(&late).unwrap();
        assert_eq!(verifier.verify(&token).await, Ok(late));
    }

    #[tokio::test]
    async fn a_token_not_yet_valid_is_refused() {
        let (key, _, verifier) = setup();
        let mut early = claims();
        early.nbf = now() + 600;
        let token = key.sign(&early).unwrap();
        assert_eq!(verifier.verify(&token).await, Err(TokenError::NotYetValid));
    }

    #[tokio::test]
    async fn wrong_audience_and_issuer_are_refused() {
        let (key, _, verifier) = setup();
        let mut other_audience = claims();
        other_audience.aud = "billing".into();
        let token = key.sign(&other_audience).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::Invalid("wrong audience".into()))
        );

        let mut other_issuer = claims();
        other_issuer.iss = "evil".into();
        let token = key.sign(&other_issuer).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::Invalid("wrong issuer".into()))
        );
    }

    #[tokio::test]
    async fn a_policy_chooses_issuer_audience_and_leeway() {
        let key = SigningKey::generate("k1");
        let policy = Policy {
            issuer: "auth".into(),
            audience: "orders".into(),
            leeway: Duration::ZERO,
        };
        let verifier = Verifier::new(Arc::new(vec![key.jwk()]), policy);
        let mut claims = claims();
        (claims.iss, claims.aud) = ("auth".into(), "orders".into());
        assert_eq!(
            verifier.verify(&key.sign(&claims).unwrap()).await,
            Ok(claims.clone())
        );
        claims.exp = now() - 5;
        assert_eq!(
            verifier.verify(&key.sign(&claims).unwrap()).await,
            Err(TokenError::Expired)
        );
    }

    #[tokio::test]
    async fn a_tampered_payload_is_refused() {
        let (key, _, verifier) = setup();
        let token = key.sign(&claims()).unwrap();
        let parts = segments(&token);
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        let elevated = payload.replace("\"customer\"", "\"admin\"");
        assert_ne!(payload, elevated);
        let forged = format!("{}.{}.{}", parts[0], b64(elevated), parts[2]);
        assert_eq!(
            verifier.verify(&forged).await,
            Err(TokenError::Invalid("signature does not verify".into()))
        );
    }

    #[tokio::test]
    async fn another_key_with_the_same_kid_is_refused() {
        let (_, _, verifier) = setup();
        let impostor = SigningKey::generate("k1");
        let token = impostor.sign(&claims()).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::Invalid("signature does not verify".into()))
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let (_, source, verifier) = setup();
        for garbage in [
            "",
            "garbage",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "eyJhbGciOiJFZERTQSJ9",
            "!!!.???.***",
        ] {
            assert!(
                matches!(
                    verifier.verify(garbage).await,
                    Err(TokenError::Malformed(_))
                ),
                "{garbage:?}"
            );
        }
        assert_eq!(source.fetches(), 0, "garbage never reaches the key source");
    }

    #[tokio::test]
    async fn an_oversized_token_is_refused_unparsed() {
        let key = SigningKey::generate("k1");
        let source = TestKeys::with(&[&key]);
        let verifier = Verifier::new(source.clone(), Policy::default());
        let mut big = claims();
        big.roles = vec!["r".repeat(7 * 1024)];
        let token = key.sign(&big).unwrap();
        assert!(token.len() > 9 * 1024, "{}", token.len());
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::Malformed("longer than 8 KiB".into()))
        );
        assert_eq!(source.fetches(), 0);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_at_most_once_per_floor() {
        let (key, source, verifier) = setup();
        let verifier = verifier.with_refetch_floor(Duration::from_millis(200));
        let token = key.sign(&claims()).unwrap();
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(source.fetches(), 1);

        tokio::time::sleep(Duration::from_millis(250)).await;
        let unknown = SigningKey::generate("k9").sign(&claims()).unwrap();
        assert!(matches!(
            verifier.verify(&unknown).await,
            Err(TokenError::UnknownKey(_))
        ));
        assert_eq!(source.fetches(), 2, "an unknown kid refetches");

        for kid in ["k9", "k10", "k11"] {
            let unknown = SigningKey::generate(kid).sign(&claims()).unwrap();
            assert!(matches!(
                verifier.verify(&unknown).await,
                Err(TokenError::UnknownKey(_))
            ));
        }
        assert_eq!(source.fetches(), 2, "no refetch within the floor");
        assert!(
            verifier.verify(&token).await.is_ok(),
            "known keys still work"
        );

        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(verifier.verify(&unknown).await.is_err());
        assert_eq!(source.fetches(), 3, "after the floor it may refetch again");
    }

    #[tokio::test]
    async fn the_default_floor_blocks_an_immediate_refetch() {
        let (key, source, verifier) = setup();
        assert!(verifier.verify(&key.sign(&claims()).unwrap()).await.is_ok());
        let unknown = SigningKey::generate("k9").sign(&claims()).unwrap();
        assert!(verifier.verify(&unknown).await.is_err());
        assert_eq!(source.fetches(), 1);
    }

    #[tokio::test]
    async fn a_rotated_key_verifies_after_the_refetch() {
        let (old, source, verifier) = setup();
        let verifier = verifier.with_refetch_floor(Duration::ZERO);
        assert!(verifier.verify(&old.sign(&claims()).unwrap()).await.is_ok());

        let new = SigningKey::generate("k2");
        source.add(&new);
        let claims = claims();
        assert_eq!(
            verifier.verify(&new.sign(&claims).unwrap()).await,
            Ok(claims.clone())
        );
        assert_eq!(source.fetches(), 2);

        // Retiring the old key drops it at the next fetch.
        source.set(vec![new.jwk()]);
        let newer = SigningKey::generate("k3");
        source.add(&newer);
        assert!(verifier.verify(&newer.sign(&claims).unwrap()).await.is_ok());
        assert_eq!(
            verifier.verify(&old.sign(&claims).unwrap()).await,
            Err(TokenError::UnknownKey("k1".into()))
        );
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let key = SigningKey::generate("k1");
        let source = TestKeys::with(&[&key]);
        let verifier = Verifier::new(source.clone(), Policy::default());
        let token = key.sign(&claims()).unwrap();
        let results = futures::future::join_all((0..16).map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        }))
        .await;
        for result in results {
            assert!(result.unwrap().is_ok());
        }
        assert_eq!(source.fetches(), 1);
    }

    #[tokio::test]
    async fn an_unusable_published_key_is_ignored() {
        let key = SigningKey::generate("k1");
        let mut jwks = Vec::new();
        for broken in [
            Jwk {
                alg: "HS256".into(),
                ..key.jwk()
            },
            Jwk {
                crv: "X25519".into(),
                ..key.jwk()
            },
            Jwk {
                use_: "enc".into(),
                ..key.jwk()
            },
            Jwk {
                x: b64([0u8; 31]),
                ..key.jwk()
            },
            // The identity point: a small-order key any signature might match.
            Jwk {
                x: b64(hex(
                    "0100000000000000000000000000000000000000000000000000000000000000",
                )),
                ..key.jwk()
            },
        ] {
            jwks.push(broken);
        }
        let verifier = Verifier::new(Arc::new(jwks), Policy::default());
        let token = key.sign(&claims()).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::UnknownKey("k1".into()))
        );
    }

    #[tokio::test]
    async fn an_unreachable_key_source_is_unavailable() {
        let (key, source, verifier) = setup();
        source.fail(Some("connection refused"));
        let token = key.sign(&claims()).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::KeysUnavailable("connection refused".into()))
        );
        // Within the floor the failure is remembered, not retried.
        source.fail(None);
        assert!(matches!(
            verifier.verify(&token).await,
            Err(TokenError::KeysUnavailable(_))
        ));
        assert_eq!(source.fetches(), 1);

        let verifier = verifier.with_refetch_floor(Duration::ZERO);
        assert!(verifier.verify(&token).await.is_ok());

        let empty = Verifier::new(Arc::new(Vec::new()), Policy::default());
        assert!(matches!(
            empty.verify(&token).await,
            Err(TokenError::KeysUnavailable(_))
        ));
    }

    #[tokio::test]
    async fn errors_map_to_stable_reasons_without_the_token() {
        let (key, _, verifier) = setup();
        let mut expired = claims();
        expired.exp = now() - 3600;
        let token = key.sign(&expired).unwrap();
        let error = Error::from(verifier.verify(&token).await.unwrap_err());
        assert_eq!(
            (error.kind(), error.reason()),
            (ErrorKind::Unauthenticated, "TOKEN_EXPIRED")
        );

        let cases = [
            (TokenError::Malformed("x".into()), "TOKEN_MALFORMED"),
            (TokenError::UnknownKey("k9".into()), "TOKEN_UNKNOWN_KEY"),
            (TokenError::NotYetValid, "TOKEN_INVALID"),
            (TokenError::Invalid("x".into()), "TOKEN_INVALID"),
        ];
        for (token_error, reason) in cases {
            let error = Error::from(token_error);
            assert_eq!(error.kind(), ErrorKind::Unauthenticated);
            assert_eq!(error.reason(), reason);
        }
        let error = Error::from(TokenError::KeysUnavailable("10.0.0.7 refused".into()));
        assert_eq!(
            (error.kind(), error.reason()),
            (ErrorKind::Unavailable, "AUTH_KEYS_UNAVAILABLE")
        );
        assert!(!error.message().contains("10.0.0.7"));
        let error = Error::from(TokenError::Key("bad der".into()));
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert_eq!(error.message(), "internal error");

        // No refusal quotes the token or its payload.
        let parts = segments(&key.sign(&claims()).unwrap());
        let attacks = [
            format!("{}.{}.", b64(r#"{"alg":"none","kid":"k1"}"#), parts[1]),
            format!(
                "{}.{}.{}",
                parts[0],
                b64("{\"sub\":\"secret-ish\"}"),
                parts[2]
            ),
            format!("{}.{}.{}", parts[0], parts[1], b64("sig")),
            "secret-ish".to_owned(),
        ];
        for attack in attacks {
            let error = verifier.verify(&attack).await.unwrap_err();
            let message = Error::from(error.clone()).message().to_owned();
            for text in [message, error.to_string()] {
                assert!(!text.contains("secret-ish"), "{text}");
                assert!(!text.contains(&parts[1]), "{text}");
            }
        }
    }

    #[test]
    fn the_default_policy() {
        let policy = Policy::default();
        assert_eq!(policy.issuer, "shopmesh");
        assert_eq!(policy.audience, "shopmesh");
        assert_eq!(policy.leeway, Duration::from_secs(30));
    }
}
