//! Layered configuration: built-in defaults, then a TOML file, then `HORDE_…` environment
//! variables (nested keys joined by `__`, e.g. `HORDE_API__TEST_USERS=true`), then flags.

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use horde_server::config::ServerConfig;
use std::path::{Path, PathBuf};

/// Top-level keys the environment may set; other `HORDE_…` variables are not ours.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "public_url",
    "database",
    "api",
    "requests",
    "jobs",
    "workers",
    "limits",
    "quotas",
    "models",
    "metrics",
    "webhooks",
    "text",
    "documents",
    "registration",
];

/// The default config file, read when present and no `--config` is given.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "horde.toml";

pub(crate) fn load(config_file: Option<&Path>, flags: Figment) -> anyhow::Result<ServerConfig> {
    let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
    match config_file {
        Some(path) => {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            figment = figment.merge(Toml::file(path));
        }
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
            figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE))
        }
        None => {}
    }
    figment = figment.merge(Env::prefixed("HORDE_").split("__").filter(|key| {
        ENV_KEYS
            .iter()
            .any(|k| key.as_str().to_ascii_lowercase().starts_with(k))
    }));
    // The public horde's switch for its test-user endpoint.
    if std::env::var("HORDE_TEST_APIKEYS").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        figment = figment.merge(Serialized::default("api.test_users", true));
    }
    figment
        .merge(flags)
        .extract()
        .context("invalid configuration")
}

/// Flags that override configuration, as a figment layer.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseFlag>,
}

/// `--database URL`, as the layer `database.url`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct DatabaseFlag {
    pub url: String,
}

pub(crate) fn flags_layer(
    overrides: FlagOverrides,
    test_users: bool,
    no_rate_limits: bool,
) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(overrides));
    if test_users {
        figment = figment.merge(Serialized::default("api.test_users", true));
    }
    if no_rate_limits {
        figment = figment.merge(Serialized::default("api.rate_limits", false));
    }
    figment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../horde.example.toml");
        let config: ServerConfig = Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Toml::file(example))
            .extract()
            .expect("horde.example.toml is valid");
        let as_json = |c: &ServerConfig| serde_json::to_value(c).unwrap();
        assert_eq!(as_json(&config), as_json(&ServerConfig::default()));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail decides the closure's error type
    fn every_section_can_be_set_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HORDE_JOBS__DEADLINE_FLOOR_SECS", "7");
            jail.set_env("HORDE_WORKERS__SUSPICION_THRESHOLD", "9");
            jail.set_env("HORDE_QUOTAS__ANONYMOUS__IMAGES_PER_DAY", "11");
            jail.set_env("HORDE_LIMITS__CHECK_PER_IP", "3/second");
            jail.set_env("HORDE_METRICS__BEARER_TOKEN", "scraper");
            jail.set_env("HORDE_WEBHOOKS__ALLOW_HTTP", "true");
            jail.set_env("HORDE_DOCUMENTS__NEWS", "/srv/news.json");
            let config = load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(config.metrics.bearer_token, "scraper");
            assert!(config.webhooks.allow_http);
            assert_eq!(config.documents.news, PathBuf::from("/srv/news.json"));
            assert_eq!(config.jobs.deadline_floor_secs, 7);
            assert_eq!(config.workers.suspicion_threshold, 9);
            assert_eq!(config.quotas.anonymous.images_per_day, 11);
            assert_eq!(
                config.limits.check_per_ip,
                horde_core::ratelimit::Limit::per_second(3)
            );
            Ok(())
        });
    }

    /// A new section of the configuration is readable from `HORDE_*` variables too.
    #[test]
    fn the_environment_filter_names_every_top_level_key() {
        let defaults = serde_json::to_value(ServerConfig::default()).unwrap();
        for key in defaults.as_object().unwrap().keys() {
            assert!(ENV_KEYS.contains(&key.as_str()), "{key} is not in ENV_KEYS");
        }
    }
}
