//! Personal data at rest: the profile (e-mail, name, phone, addresses) is sealed as one value
//! bound to the account id, and the e-mail is found through a blind index, never stored plain.

use shopmesh_kit::crypto::{BlindIndex, MasterKey, Sealer};
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::common::v1::Address;
use uuid::Uuid;

/// The sealed part of an account.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(string, tag = "1")]
    pub email: String,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(string, tag = "3")]
    pub phone: String,
    #[prost(message, repeated, tag = "4")]
    pub addresses: Vec<Address>,
}

/// Seals profiles and indexes e-mail addresses with keys derived from the service's data key.
#[derive(Debug, Clone)]
pub struct Vault {
    sealer: Sealer,
    index: BlindIndex,
}

impl Vault {
    pub fn new(key: &MasterKey) -> Self {
        Self {
            sealer: Sealer::new(key, "users.profile"),
            index: BlindIndex::new(key, "users.email"),
        }
    }

    /// The lookup key of an e-mail address, after normalising it.
    pub fn email_index(&self, email: &str) -> Vec<u8> {
        self.index.of(&normalize_email(email))
    }

    pub fn seal(&self, id: Uuid, profile: &Profile) -> Vec<u8> {
        self.sealer
            .seal(&prost::Message::encode_to_vec(profile), id.as_bytes())
    }

    pub fn open(&self, id: Uuid, sealed: &[u8]) -> Result<Profile> {
        let plain = self
            .sealer
            .open(sealed, id.as_bytes())
            .map_err(|e| Error::internal("cannot open a stored profile (wrong data_key?)", e))?;
        <Profile as prost::Message>::decode(plain.as_slice())
            .map_err(|e| Error::internal("stored profile does not decode", e))
    }
}

/// E-mail addresses are compared trimmed and lower-cased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_email_index_ignores_case_and_surrounding_space() {
        let vault = Vault::new(&MasterKey::generate());
        assert_eq!(
            vault.email_index(" ADA@x.io "),
            vault.email_index("ada@x.io")
        );
        assert_ne!(vault.email_index("ada@x.io"), vault.email_index("bob@x.io"));
    }

    #[test]
    fn a_profile_opens_only_for_its_own_account() {
        let vault = Vault::new(&MasterKey::generate());
        let profile = Profile {
            email: "ada@x.io".into(),
            display_name: "Ada".into(),
            ..Profile::default()
        };
        let id = Uuid::new_v4();
        let sealed = vault.seal(id, &profile);
        assert!(!String::from_utf8_lossy(&sealed).contains("ada@x.io"));
        assert_eq!(vault.open(id, &sealed).unwrap(), profile);
        assert!(vault.open(Uuid::new_v4(), &sealed).is_err());
    }
}
