//! Data at rest that must stay secret: personal data and private keys are sealed with an AEAD
//! (XChaCha20-Poly1305), and values that must be looked up without being stored in the clear
//! (e-mail addresses) get a keyed hash, a *blind index*. Every key is derived from one master
//! key per service and a purpose, so one secret in the configuration serves all uses and a
//! ciphertext of one purpose cannot be opened as another.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{ConfigError, Secret};

/// Shortest accepted master key.
pub const MASTER_KEY_BYTES: usize = 32;
/// First byte of every sealed value, so the format can change later.
const FORMAT: u8 = 1;
const NONCE_BYTES: usize = 24;

/// A service's master key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey(Vec<u8>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(random_bytes(MASTER_KEY_BYTES))
    }

    /// Reads a key from configuration (standard base64 of at least 32 bytes); `key` names the
    /// setting in errors.
    pub fn from_secret(secret: &Secret, key: &str) -> Result<Self, ConfigError> {
        let bytes = STANDARD
            .decode(secret.expose().trim())
            .map_err(|_| ConfigError::invalid(key, "must be base64"))?;
        if bytes.len() < MASTER_KEY_BYTES {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "must hold at least {MASTER_KEY_BYTES} bytes (got {})",
                    bytes.len()
                ),
            ));
        }
        Ok(Self(bytes))
    }

    /// The key in the form [`MasterKey::from_secret`] reads.
    pub fn to_secret(&self) -> Secret {
        Secret::new(STANDARD.encode(&self.0))
    }

    /// Loads the key kept in `path`, or creates it there (readable by the owner only).
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_secret(&Secret::new(text), &path.display().to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                write_private(path, key.to_secret().expose().as_bytes())?;
                Ok(key)
            }
            Err(error) => Err(error),
        }
    }

    /// A 32-byte key for one purpose: HMAC-SHA256 of the purpose under the master key.
    fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"shopmesh key derivation\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// A sealed value could not be opened: wrong key, wrong context, or tampered bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed value cannot be opened (wrong key or context, or altered)")]
pub struct OpenError;

/// Seals and opens values of one purpose.
#[derive(Clone)]
pub struct Sealer(XChaCha20Poly1305);

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub fn new(master: &MasterKey, purpose: &str) -> Self {
        Self(XChaCha20Poly1305::new(
            &master.derive(&format!("seal:{purpose}")).into(),
        ))
    }

    /// Encrypts `plaintext`, bound to `context` (e.g. the owning record's id, so a sealed value
    /// copied onto another record does not open).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any length we store");
        let mut sealed = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        sealed.push(FORMAT);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + NONCE_BYTES || sealed[0] != FORMAT {
            return Err(OpenError);
        }
        let nonce: [u8; NONCE_BYTES] = sealed[1..1 + NONCE_BYTES]
            .try_into()
            .map_err(|_| OpenError)?;
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_BYTES..],
                    aad: context,
                },
            )
            .map_err(|_| OpenError)
    }
}

/// Keyed hashes of one purpose: equal inputs give equal outputs, and without the key nobody can
/// test a guess against a stored value.
#[derive(Clone)]
pub struct BlindIndex([u8; 32]);

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex(<redacted>)")
    }
}

impl BlindIndex {
    pub fn new(master: &MasterKey, purpose: &str) -> Self {
        Self(master.derive(&format!("index:{purpose}")))
    }

    pub fn of(&self, value: &str) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// `n` bytes from the operating system's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    rand::fill(bytes.as_mut_slice());
    bytes
}

/// A random token of `n` bytes, base64url without padding (for opaque tokens and passwords).
pub fn random_token(n: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(n))
}

/// SHA-256, for storing high-entropy tokens by hash (no key needed: they cannot be guessed).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_purpose_and_context() {
        let master = MasterKey::generate();
        let sealer = Sealer::new(&master, "profile");
        let sealed = sealer.seal(b"Ada Lovelace", b"user-1");
        assert_eq!(sealer.open(&sealed, b"user-1").unwrap(), b"Ada Lovelace");
        assert_ne!(&sealed[1 + NONCE_BYTES..], b"Ada Lovelace");
        assert_eq!(sealer.open(&sealed, b"user-2"), Err(OpenError));
        assert_eq!(
            Sealer::new(&master, "keys").open(&sealed, b"user-1"),
            Err(OpenError)
        );
        assert_eq!(
            Sealer::new(&MasterKey::generate(), "profile").open(&sealed, b"user-1"),
            Err(OpenError)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open(&tampered, b"user-1"), Err(OpenError));
        assert_eq!(sealer.open(&sealed[..10], b"user-1"), Err(OpenError));
        assert_ne!(
            sealer.seal(b"Ada Lovelace", b"user-1"),
            sealed,
            "fresh nonces"
        );
    }

    #[test]
    fn blind_indexes_are_stable_and_keyed() {
        let master = MasterKey::generate();
        let index = BlindIndex::new(&master, "email");
        assert_eq!(index.of("ada@example.com"), index.of("ada@example.com"));
        assert_ne!(index.of("ada@example.com"), index.of("bob@example.com"));
        assert_ne!(
            BlindIndex::new(&MasterKey::generate(), "email").of("ada@example.com"),
            index.of("ada@example.com")
        );
    }

    #[test]
    fn master_keys_are_read_checked_and_kept() {
        let short = Secret::new(STANDARD.encode([0u8; 16]));
        let error = MasterKey::from_secret(&short, "services.users.data_key").unwrap_err();
        assert!(
            error.to_string().contains("services.users.data_key"),
            "{error}"
        );
        assert!(MasterKey::from_secret(&Secret::new("not base64!"), "k").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/users.key");
        let created = MasterKey::load_or_create(&path).unwrap();
        let loaded = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(created.0, loaded.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
