//! The `services.reviews` section.

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Validate};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewsConfig {
    /// Publish new and edited reviews at once (moderators may still reject them afterwards)
    /// instead of holding them until a moderator approves them.
    pub post_moderation: bool,
    /// The language of a review whose author named none and sent no `Accept-Language`.
    pub default_language: String,
}

impl Default for ReviewsConfig {
    fn default() -> Self {
        Self {
            post_moderation: false,
            default_language: "en".into(),
        }
    }
}

impl Validate for ReviewsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let valid = (2..=3).contains(&self.default_language.len())
            && self
                .default_language
                .bytes()
                .all(|b| b.is_ascii_lowercase());
        if !valid {
            return Err(ConfigError::invalid(
                "default_language",
                "must be a two- or three-letter language code such as \"en\"",
            ));
        }
        Ok(())
    }
}
