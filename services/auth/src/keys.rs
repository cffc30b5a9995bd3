//! The signing keys. A new key is published in the JWKS at once but signs only after an
//! activation delay, so every verifier and every auth replica has seen it before the first
//! token it signs arrives; the key it replaces keeps signing until then, and stays published
//! until the last token it signed has expired. Private halves are stored sealed; every replica
//! re-reads the keys periodically, so a rotation made anywhere (another replica, `shopmesh auth
//! rotate-keys`) reaches all of them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::crypto::Sealer;
use shopmesh_kit::token::{Jwk, SigningKey};
use shopmesh_proto::shopmesh::auth::v1::{self as pb, SigningKeyState};
use uuid::Uuid;

use crate::store::{AuthStore, StoredKey};

/// The keys in use, as last loaded.
struct Loaded {
    active: Arc<SigningKey>,
    /// The newest key and when it starts signing, while it waits.
    next: Option<(i64, Arc<SigningKey>)>,
    /// Published keys, newest first: the active one and retired ones still verifying tokens.
    published: Vec<Published>,
}

struct Published {
    jwk: Jwk,
    created_at_ms: i64,
    /// `None` for the newest key.
    remove_after_ms: Option<i64>,
}

/// How long a key waits between creation and signing, and how long a retired key stays
/// published.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub activation: Duration,
    /// The access-token lifetime plus clock leeway.
    pub retention: Duration,
}

impl Timing {
    /// When a key retired now leaves the JWKS: after its successor starts signing and the
    /// last token it signed expires.
    fn remove_after(&self, now_ms: i64) -> i64 {
        now_ms + (self.activation + self.retention).as_millis() as i64
    }
}

pub struct KeyRing {
    store: Arc<dyn AuthStore>,
    sealer: Sealer,
    timing: Timing,
    loaded: RwLock<Arc<Loaded>>,
}

impl KeyRing {
    /// Loads the keys, creating the first one on a fresh store.
    pub async fn open(
        store: Arc<dyn AuthStore>,
        sealer: Sealer,
        timing: Timing,
    ) -> anyhow::Result<Self> {
        let stored = store.keys().await?;
        let stored = if stored.is_empty() {
            add_key(&*store, &sealer, timing, &[]).await?;
            store.keys().await?
        } else {
            stored
        };
        let loaded = load(&sealer, timing, stored)?;
        Ok(Self {
            store,
            sealer,
            timing,
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    /// Re-reads the keys from the store.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let loaded = load(&self.sealer, self.timing, self.store.keys().await?)?;
        *self.loaded.write().expect("key ring lock") = Arc::new(loaded);
        Ok(())
    }

    /// Adds a new signing key and retires the current ones; returns the new key's id. The new
    /// key signs once the activation delay has passed.
    pub async fn rotate(&self) -> anyhow::Result<String> {
        let stored = self.store.keys().await?;
        let kid = add_key(&*self.store, &self.sealer, self.timing, &stored).await?;
        self.reload().await?;
        tracing::info!(kid, "signing key rotated");
        Ok(kid)
    }

    /// The key that signs new tokens. A key loaded before its activation time takes over once
    /// that time has come, without waiting for the next reload.
    pub fn signer(&self) -> Arc<SigningKey> {
        let loaded = self.current();
        match &loaded.next {
            Some((at, key)) if *at <= now_ms() => key.clone(),
            _ => loaded.active.clone(),
        }
    }

    /// The public keys that verify tokens now.
    pub fn jwks(&self) -> Vec<Jwk> {
        let now = now_ms();
        self.current()
            .published
            .iter()
            .filter(|key| key.remove_after_ms.is_none_or(|at| at > now))
            .map(|key| key.jwk.clone())
            .collect()
    }

    /// Public facts about the published keys, newest first.
    pub fn describe(&self) -> Vec<pb::SigningKey> {
        let now = now_ms();
        let signer = self.signer();
        let current = self.current();
        let signer_created_at = current
            .published
            .iter()
            .find(|key| key.jwk.kid == signer.kid())
            .map_or(i64::MAX, |key| key.created_at_ms);
        current
            .published
            .iter()
            .filter(|key| key.remove_after_ms.is_none_or(|at| at > now))
            .map(|key| pb::SigningKey {
                kid: key.jwk.kid.clone(),
                state: if key.jwk.kid == signer.kid() {
                    SigningKeyState::Active
                } else if key.created_at_ms > signer_created_at {
                    SigningKeyState::Pending
                } else {
                    SigningKeyState::Retired
                } as i32,
                created_at: Some(timestamp(key.created_at_ms)),
                remove_after: key.remove_after_ms.map(timestamp),
            })
            .collect()
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().expect("key ring lock").clone()
    }
}

/// Generates and stores a key, retiring every key in `existing` that is not retired yet.
async fn add_key(
    store: &dyn AuthStore,
    sealer: &Sealer,
    timing: Timing,
    existing: &[StoredKey],
) -> anyhow::Result<String> {
    let kid = Uuid::now_v7().simple().to_string();
    let key = SigningKey::generate(kid.clone());
    let now = now_ms();
    let stored = StoredKey {
        kid: kid.clone(),
        sealed_private: sealer.seal(key.to_pkcs8().expose().as_bytes(), kid.as_bytes()),
        created_at_ms: now,
        retired_at_ms: None,
        remove_after_ms: None,
    };
    let remove_after = timing.remove_after(now);
    let retire: Vec<(String, i64)> = existing
        .iter()
        .filter(|key| key.retired_at_ms.is_none())
        .map(|key| (key.kid.clone(), remove_after))
        .collect();
    store.add_key(&stored, &retire).await?;
    Ok(kid)
}

/// The newest key signs once its activation time has come; until then the newest key that
/// is already active (or, when none is yet, the oldest) signs. Unretired keys other than the
/// newest (replicas that created a first key at the same moment) count as retired when the
/// newest was created.
fn load(sealer: &Sealer, timing: Timing, mut stored: Vec<StoredKey>) -> anyhow::Result<Loaded> {
    stored.sort_by(|a, b| {
        b.created_at_ms
            .cmp(&a.created_at_ms)
            .then(b.kid.cmp(&a.kid))
    });
    let newest = stored.first().context("no signing key exists")?;
    let activation = timing.activation.as_millis() as i64;
    let now = now_ms();
    // Before any key is due (a fresh store, or a rotation soon after it), the oldest signs:
    // it has been published longest.
    let signing = stored
        .iter()
        .find(|key| key.created_at_ms + activation <= now)
        .or(stored.last())
        .unwrap_or(newest);
    let active = Arc::new(open(sealer, signing)?);
    let next = if signing.kid == newest.kid {
        None
    } else {
        Some((
            newest.created_at_ms + activation,
            Arc::new(open(sealer, newest)?),
        ))
    };
    let implied_removal = timing.remove_after(newest.created_at_ms);
    let mut published = Vec::new();
    for key in &stored {
        let remove_after_ms = if key.kid == newest.kid {
            None
        } else {
            Some(key.remove_after_ms.unwrap_or(implied_removal))
        };
        if remove_after_ms.is_some_and(|at| at <= now) {
            continue;
        }
        published.push(Published {
            jwk: open(sealer, key)?.jwk(),
            created_at_ms: key.created_at_ms,
            remove_after_ms,
        });
    }
    Ok(Loaded {
        active,
        next,
        published,
    })
}

fn open(sealer: &Sealer, key: &StoredKey) -> anyhow::Result<SigningKey> {
    let pkcs8 = sealer
        .open(&key.sealed_private, key.kid.as_bytes())
        .with_context(|| format!("cannot open signing key {} (wrong data_key?)", key.kid))?;
    Ok(SigningKey::from_pkcs8(key.kid.clone(), &pkcs8)?)
}
