//! The commands that work on the database without a running coordinator: `horde migrate` and
//! `horde user create`.

use crate::clock::now;
use crate::config::ServerConfig;
use crate::users::CreatedUser;
use crate::StartError;
use horde_core::keys::{generate_api_key, hash_api_key};
use horde_store::NewUser;

/// Creates a user directly in the database of `config`, without a running server (the
/// `horde user create` command). The salt is the one the server uses.
pub async fn create_user_offline(
    config: &ServerConfig,
    username: &str,
    moderator: bool,
    trusted: bool,
    kudos: f64,
) -> Result<CreatedUser, StartError> {
    let store = open_store(config).await?;
    let salt = store
        .setting_or_init("api_key_salt", || {
            horde_core::keys::generate_token(&mut rand::rng())
        })
        .await?;
    let api_key = generate_api_key(&mut rand::rng());
    let new = NewUser {
        username: username.to_string(),
        oauth_id: format!("pseudo_{}", uuid::Uuid::new_v4()),
        api_key_hash: hash_api_key(&salt, &api_key),
        moderator,
        trusted: trusted || moderator,
        kudos,
        created: now(),
    };
    let user = store.create_user(&new).await?;
    store.close().await;
    Ok(CreatedUser { user, api_key })
}

/// Applies migrations to the database of `config` (the `horde migrate` command).
pub async fn migrate_offline(config: &ServerConfig) -> Result<String, StartError> {
    let store = open_store(config).await?;
    let mode = store.journal_mode().await?;
    store.close().await;
    Ok(mode)
}

/// The database of `config`, opened (and migrated) as the server opens it, its data directory
/// created first.
async fn open_store(config: &ServerConfig) -> Result<horde_store::Store, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    Ok(horde_store::Store::open(&config.database_location(), config.database.durability).await?)
}
