//! Layered configuration: defaults → TOML file → `IMGPIPE_`-prefixed environment.
//!
//! Every section is a strict serde struct (`deny_unknown_fields`), so a typo in a file or an
//! environment variable is an error at start-up, not a silently ignored setting. Nested keys use a
//! double underscore in the environment: `IMGPIPE_KAFKA__BROKERS=127.0.0.1:9092`.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Prefix of every environment variable that configures imgpipe.
pub const ENV_PREFIX: &str = "IMGPIPE_";

/// Why the configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the config structs.
    #[error("reading configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// The file named on the command line does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
    /// Values parsed, but break a rule; every broken rule is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A config whose fields depend on each other checks those rules here, before anything connects.
pub trait Validate {
    /// Pushes one message per broken rule into `errors`.
    fn validate(&self, errors: &mut Vec<String>);
}

/// Loads `T` from its defaults, then the optional TOML file, then the environment, and validates it.
///
/// Only variables with a nested key (`IMGPIPE_SECTION__FIELD`) are read, so unrelated variables
/// that share the prefix (the local stack's `IMGPIPE_KAFKA_PORT`, say) do not trip
/// `deny_unknown_fields`.
pub fn load_config<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file(path));
    }
    let env = Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    let config: T = figment.merge(env).extract().map_err(Box::new)?;
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// The JSON Schema of a `Duration` field read with `humantime_serde`: a string such as `"10s"`,
/// `"250ms"` or `"35d"`. Config fields name it with `#[schemars(with = "HumanDuration")]`, so the
/// generated configuration reference says "duration" instead of a seconds-and-nanos object.
#[derive(Debug)]
pub struct HumanDuration;

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "duration"})
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its large error type
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        name: String,
        size: u32,
    }

    impl Default for Inner {
        fn default() -> Self {
            Self {
                name: "default".into(),
                size: 1,
            }
        }
    }

    impl Validate for Outer {
        fn validate(&self, errors: &mut Vec<String>) {
            if self.inner.size == 0 {
                errors.push("inner.size must be positive".into());
            }
            if self.inner.name.is_empty() {
                errors.push("inner.name must not be empty".into());
            }
        }
    }

    #[test]
    fn layers_file_over_defaults_and_env_over_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[inner]\nname = \"file\"\nsize = 5\n")?;
            jail.set_env("IMGPIPE_INNER__SIZE", "7");
            jail.set_env("IMGPIPE_KAFKA_PORT", "9092"); // not nested: ignored
            let c: Outer = load_config(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.inner.name, "file");
            assert_eq!(c.inner.size, 7);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[inner]\nnmae = \"typo\"\n")?;
            let err = load_config::<Outer>(Some(Path::new("c.toml"))).unwrap_err();
            assert!(err.to_string().contains("nmae"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[inner]\nname = \"\"\nsize = 0\n")?;
            let err = load_config::<Outer>(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("inner.size") && err.contains("inner.name"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load_config::<Outer>(Some(Path::new("/nonexistent/imgpipe.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
