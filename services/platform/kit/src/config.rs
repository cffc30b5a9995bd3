//! Layered configuration: built-in defaults, then a TOML file, then `SHOPMESH_*` environment
//! variables, then `--set key=value` flags, later layers winning. Loaded in one place at start-up,
//! validated before anything runs, printable with secrets redacted (`--check-config`).
//!
//! Environment variables name nested keys with a double underscore:
//! `SHOPMESH_STORAGE__BACKEND=cql` sets `storage.backend`.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The environment variable prefix of every shopmesh setting.
pub const ENV_PREFIX: &str = "SHOPMESH_";

/// Configuration flags every shopmesh binary accepts.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SHOPMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Override one setting, e.g. `--set storage.backend=cql` (repeatable; wins over file and
    /// environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,

    /// Print the effective configuration (secrets redacted) and exit, or exit non-zero naming the
    /// first invalid key.
    #[arg(long)]
    pub check_config: bool,
}

/// A configuration that failed to load or validate. The message names the key and where its
/// value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} not found")]
    MissingFile { path: PathBuf },
    #[error("invalid --set {0:?}: expected KEY=VALUE")]
    BadOverride(String),
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A rule broken by an otherwise well-formed setting.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Load(Box::new(error))
    }
}

/// Checks a loaded configuration beyond what its types say.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

impl ConfigArgs {
    /// The merged layers, not yet extracted: callers extract the whole config or one section.
    pub fn figment(&self) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = &self.config {
            if !path.is_file() {
                return Err(ConfigError::MissingFile { path: path.clone() });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(environment());
        for item in &self.overrides {
            figment = figment.merge(Toml::string(&override_as_toml(item)?));
        }
        Ok(figment)
    }

    /// Loads and validates the whole configuration.
    pub fn load<T: DeserializeOwned + Validate>(&self) -> Result<T, ConfigError> {
        let config: T = self.figment()?.extract().map_err(ConfigError::from)?;
        config.validate()?;
        Ok(config)
    }
}

/// `SHOPMESH_*` variables, except those that are not settings (the config file path and the test
/// bed's engine addresses).
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX)
        .ignore(&["config", "log"])
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            !(key.starts_with("test_") || key.starts_with("testbed_"))
        })
        .split("__")
}

/// `a.b=value` as a TOML line. A value that is not a TOML literal is taken as a string, so
/// `--set storage.backend=cql` needs no quotes.
fn override_as_toml(item: &str) -> Result<String, ConfigError> {
    let (key, value) = item
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(item.to_owned()))?;
    let key = key.trim();
    let valid_key = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid_key {
        return Err(ConfigError::BadOverride(item.to_owned()));
    }
    let value = value.trim();
    let literal = format!("v = {value}");
    if toml::from_str::<toml::Table>(&literal).is_ok() {
        Ok(format!("{key} = {value}"))
    } else {
        Ok(format!("{key} = {}", toml::Value::String(value.to_owned())))
    }
}

/// Renders a configuration for `--check-config`. [`Secret`] values render as `<redacted>`.
pub fn render<T: Serialize>(config: &T) -> String {
    toml::to_string_pretty(config)
        .unwrap_or_else(|error| format!("# cannot render configuration: {error}\n"))
}

/// A setting that must never be printed or logged: its `Debug`, `Display` and `Serialize` all
/// say `<redacted>`. Read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Resolves `path` against `base` unless it is absolute.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        port: u16,
        name: String,
        token: Secret,
        nested: Nested,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        level: String,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                port: 80,
                name: "default".into(),
                token: Secret::default(),
                nested: Nested::default(),
            }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.port == 0 {
                return Err(ConfigError::invalid("port", "must not be 0"));
            }
            Ok(())
        }
    }

    fn args(file: Option<&Path>, overrides: &[&str]) -> ConfigArgs {
        ConfigArgs {
            config: file.map(Path::to_owned),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            check_config: false,
        }
    }

    #[test]
    fn layers_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "port = 8080\nname = \"file\"\n[nested]\nlevel = \"debug\"\n",
        )
        .unwrap();
        let sample: Sample = args(Some(&file), &["name=flag", "nested.level=warn"])
            .load()
            .unwrap();
        assert_eq!(sample.port, 8080);
        assert_eq!(sample.name, "flag");
        assert_eq!(sample.nested.level, "warn");
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "port = \"eighty\"\n").unwrap();
        let error = args(Some(&file), &[])
            .load::<Sample>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("port"), "{error}");
        assert!(error.contains("bad.toml"), "{error}");

        std::fs::write(&file, "prot = 1\n").unwrap();
        let error = args(Some(&file), &[])
            .load::<Sample>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("prot"), "{error}");

        let error = args(None, &["port=0"])
            .load::<Sample>()
            .unwrap_err()
            .to_string();
        assert_eq!(error, "invalid setting `port`: must not be 0");

        let missing = dir.path().join("missing.toml");
        let error = args(Some(&missing), &[])
            .load::<Sample>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.toml"), "{error}");
    }

    #[test]
    fn overrides_must_be_key_value() {
        for bad in ["no-equals", "=x", "a..b=1", "a b=1"] {
            assert!(
                matches!(
                    args(None, &[bad]).figment(),
                    Err(ConfigError::BadOverride(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_never_render() {
        let sample: Sample = args(None, &["token=hunter2-hunter2"]).load().unwrap();
        assert_eq!(sample.token.expose(), "hunter2-hunter2");
        let rendered = render(&sample);
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(rendered.contains("<redacted>"), "{rendered}");
        assert_eq!(format!("{:?}", sample.token), "<redacted>");
    }
}
