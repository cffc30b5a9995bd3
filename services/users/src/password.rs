//! Passwords: the policy a new password must meet, and bcrypt hashing on blocking threads with
//! bounded concurrency, so a flood of logins queues instead of starving the async runtime.

use std::sync::Arc;
use std::time::Duration;

use shopmesh_kit::{Error, Result};
use tokio::sync::Semaphore;

/// Shortest accepted password, in characters.
pub const MIN_CHARS: usize = 10;
/// Longest accepted password, in bytes: bcrypt ignores everything after the 72nd byte.
pub const MAX_BYTES: usize = 72;
/// How long a hash may wait for a free hashing slot before the call is refused as overload.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Passwords long enough to pass the length rule but among the first that attackers try.
const COMMON: &[&str] = &[
    "0000000000",
    "0123456789",
    "0987654321",
    "1111111111",
    "1234567890",
    "12345678910",
    "123456789a",
    "123123123123",
    "1q2w3e4r5t",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "aaaaaaaaaa",
    "abcdefghij",
    "abc1234567",
    "administrator",
    "asdfghjkl1",
    "baseball123",
    "changeme123",
    "football123",
    "iloveyou123",
    "letmein123",
    "password01",
    "password12",
    "password123",
    "password1234",
    "passw0rd123",
    "princess123",
    "qazwsxedcrfv",
    "qwerty1234",
    "qwerty123456",
    "qwertyuiop",
    "qwertyuiop1",
    "sunshine123",
    "superman123",
    "trustno1234",
    "welcome123",
    "zaq12wsxcde",
];

/// Checks a new password against the policy; the error names the rule that failed.
pub fn check_policy(field: &str, password: &str) -> Result<()> {
    if password.chars().count() < MIN_CHARS {
        return Err(Error::invalid_field(
            field,
            format!("must be at least {MIN_CHARS} characters long"),
        ));
    }
    if password.len() > MAX_BYTES {
        return Err(Error::invalid_field(
            field,
            format!("must be at most {MAX_BYTES} bytes long (bcrypt reads no further)"),
        ));
    }
    let lowered = password.to_lowercase();
    if COMMON.contains(&lowered.as_str()) {
        return Err(Error::invalid_field(
            field,
            "is one of the most common passwords; choose another",
        ));
    }
    Ok(())
}

/// bcrypt hashing and verification with a bounded number of hashes in flight.
#[derive(Clone)]
pub struct Hasher {
    cost: u32,
    slots: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist, so an
    /// unknown e-mail costs the same time as a wrong password.
    dummy: Arc<str>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// `concurrency` 0 means one hash per core.
    pub async fn new(cost: u32, concurrency: usize) -> anyhow::Result<Self> {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            concurrency
        };
        let random = shopmesh_kit::crypto::random_token(24);
        let dummy = tokio::task::spawn_blocking(move || bcrypt::hash(random, cost)).await??;
        Ok(Self {
            cost,
            slots: Arc::new(Semaphore::new(concurrency)),
            dummy: dummy.into(),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String> {
        let (password, cost) = (password.to_owned(), self.cost);
        self.run(move || bcrypt::hash(password, cost)).await
    }

    /// Whether `password` matches `hash`; with no hash, checks against the dummy and fails.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let password = password.to_owned();
        let matched = self.run(move || bcrypt::verify(password, &hash)).await?;
        Ok(known && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> bcrypt::BcryptResult<T> + Send + 'static,
    ) -> Result<T> {
        let _slot = tokio::time::timeout(QUEUE_TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                Error::unavailable("HASHING_BUSY", "too many password checks at once, retry")
                    .with_retry_after(Duration::from_secs(1))
            })?
            .map_err(|e| Error::internal("hashing slots closed", e))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::internal("hashing task failed", e))?
            .map_err(|e| Error::internal("bcrypt failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_rule_that_failed() {
        let short = check_policy("password", "short").unwrap_err();
        assert!(short.violations()[0].description.contains("at least 10"));
        let long = check_policy("password", &"é".repeat(40)).unwrap_err();
        assert!(long.violations()[0].description.contains("72 bytes"));
        let common = check_policy("password", "Password123").unwrap_err();
        assert!(common.violations()[0].description.contains("common"));
        assert_eq!(common.violations()[0].field, "password");
        check_policy("password", "correct horse battery staple").unwrap();
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        let hasher = Hasher::new(4, 2).await.unwrap();
        let hash = hasher.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(
            hasher
                .verify("correct horse battery", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse battery", Some(&hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("correct horse battery", None).await.unwrap());
    }
}
