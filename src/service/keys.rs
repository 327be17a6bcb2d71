//! API keys: `rst_<id>_<secret>`; only a hash of the secret is stored.
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::{Principal, Roster, Scope, ServiceError, ServiceResult, validate_name};
use crate::crypto::{constant_time_eq, hash_api_secret, random_token};
use crate::store::entity::api_key;

/// The key row that `ROSTER_ADMIN_TOKEN` controls.
pub const BOOTSTRAP_KEY_ID: &str = "bootstrap";
const BOOTSTRAP_KEY_NAME: &str = "bootstrap (ROSTER_ADMIN_TOKEN)";

/// `last_used_at` is written at most this often per key: it tells which keys are in use, and
/// a write per request would put every API call in the writer's queue.
const LAST_USE_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(60);

pub struct NewKey {
    pub key: api_key::Model,
    /// Shown once; never stored.
    pub token: SecretString,
}

fn parse_scopes(raw: &[String]) -> ServiceResult<Vec<Scope>> {
    if raw.is_empty() {
        return Err(ServiceError::invalid(
            "scopes",
            "at least one scope is required",
        ));
    }
    let mut scopes = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let scope = Scope::parse(s).ok_or_else(|| {
            ServiceError::invalid(
                format!("scopes[{i}]"),
                format!("`{s}` is not one of admin, apps:write, events:write, read"),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

fn scopes_of(model: &api_key::Model) -> Vec<Scope> {
    model
        .scopes
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(Scope::parse))
                .collect()
        })
        .unwrap_or_default()
}

#[must_use]
pub fn scope_names(model: &api_key::Model) -> Vec<String> {
    scopes_of(model)
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect()
}

impl Roster {
    /// `roster serve` only: makes `ROSTER_ADMIN_TOKEN` the bootstrap admin key (created or
    /// rotated, audited), or, when it is unset and no key exists, creates one and returns its
    /// token so that `serve` can print it once. An unset variable never revokes the key:
    /// [`Roster::revoke_bootstrap_key`] (`roster revoke-bootstrap-key`) does, when asked.
    pub async fn bootstrap_admin_key(&self) -> ServiceResult<Option<SecretString>> {
        let tx = self.write_tx().await?;
        let existing = api_key::Entity::find_by_id(BOOTSTRAP_KEY_ID)
            .one(&*tx)
            .await?;
        if let Some(token) = &self.config().admin_token {
            let hash = hash_api_secret(token.expose_secret());
            let action = match existing {
                Some(row) if row.secret_hash == hash => return Ok(None),
                Some(row) => {
                    let mut active: api_key::ActiveModel = row.into();
                    active.secret_hash = Set(hash);
                    active.update(&*tx).await?;
                    "api_key.bootstrap_rotate"
                }
                None => {
                    api_key::ActiveModel {
                        id: Set(BOOTSTRAP_KEY_ID.into()),
                        name: Set(BOOTSTRAP_KEY_NAME.into()),
                        secret_hash: Set(hash),
                        scopes: Set(json!(["admin"])),
                        created_at: Set(chrono::Utc::now()),
                        last_used_at: Set(None),
                    }
                    .insert(&*tx)
                    .await?;
                    "api_key.bootstrap_create"
                }
            };
            audit::record(
                &*tx,
                None,
                AuditEntry {
                    action,
                    object_type: "api_key",
                    object_id: Some(BOOTSTRAP_KEY_ID),
                    before: None,
                    after: Some(json!({"name": BOOTSTRAP_KEY_NAME, "scopes": ["admin"],
                                       "source": "ROSTER_ADMIN_TOKEN"})),
                },
            )
            .await?;
            tx.commit().await?;
            tracing::info!(action, "Bootstrap admin key set from ROSTER_ADMIN_TOKEN");
            return Ok(None);
        }
        if existing.is_some() {
            tracing::warn!(
                "ROSTER_ADMIN_TOKEN is unset, but the bootstrap admin key it set is still valid; \
                 `roster revoke-bootstrap-key` revokes it"
            );
            return Ok(None);
        }
        let any = api_key::Entity::find().count(&*tx).await? > 0;
        // The writer turn is released before `insert_key` takes its own.
        drop(tx);
        if any {
            return Ok(None);
        }
        let created = self
            .insert_key(None, "initial admin", vec![Scope::Admin])
            .await?;
        Ok(Some(created.token))
    }

    /// Revokes the key `ROSTER_ADMIN_TOKEN` set, with an audit row. `false` when there is none.
    pub async fn revoke_bootstrap_key(&self) -> ServiceResult<bool> {
        let tx = self.write_tx().await?;
        let Some(row) = api_key::Entity::find_by_id(BOOTSTRAP_KEY_ID)
            .one(&*tx)
            .await?
        else {
            return Ok(false);
        };
        api_key::Entity::delete_by_id(BOOTSTRAP_KEY_ID)
            .exec(&*tx)
            .await?;
        audit::record(
            &*tx,
            None,
            AuditEntry {
                action: "api_key.bootstrap_revoke",
                object_type: "api_key",
                object_id: Some(BOOTSTRAP_KEY_ID),
                before: Some(json!({"name": row.name, "scopes": scope_names(&row)})),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn create_key(
        &self,
        principal: &Principal,
        name: &str,
        scopes: &[String],
    ) -> ServiceResult<NewKey> {
        validate_name("name", name)?;
        let scopes = parse_scopes(scopes)?;
        self.insert_key(Some(principal), name, scopes).await
    }

    async fn insert_key(
        &self,
        principal: Option<&Principal>,
        name: &str,
        scopes: Vec<Scope>,
    ) -> ServiceResult<NewKey> {
        let id = hex::encode(&uuid::Uuid::new_v4().as_bytes()[..8]);
        let secret = random_token();
        let tx = self.write_tx().await?;
        let key = api_key::ActiveModel {
            id: Set(id.clone()),
            name: Set(name.to_owned()),
            secret_hash: Set(hash_api_secret(&secret)),
            scopes: Set(json!(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>())),
            created_at: Set(chrono::Utc::now()),
            last_used_at: Set(None),
        }
        .insert(&*tx)
        .await?;
        audit::record(
            &*tx,
            principal,
            AuditEntry {
                action: "api_key.create",
                object_type: "api_key",
                object_id: Some(&id),
                before: None,
                after: Some(json!({"name": name, "scopes": scope_names(&key)})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(NewKey {
            key,
            token: SecretString::from(format!("rst_{id}_{secret}")),
        })
    }

    pub async fn list_keys(&self) -> ServiceResult<Vec<api_key::Model>> {
        Ok(api_key::Entity::find()
            .order_by_asc(api_key::Column::CreatedAt)
            .all(self.db())
            .await?)
    }

    pub async fn delete_key(&self, principal: &Principal, id: &str) -> ServiceResult<()> {
        if id == BOOTSTRAP_KEY_ID {
            return Err(ServiceError::Conflict(
                "the bootstrap key is controlled by ROSTER_ADMIN_TOKEN: unset it, then run `roster revoke-bootstrap-key`"
                    .into(),
            ));
        }
        let tx = self.write_tx().await?;
        let Some(row) = api_key::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("api key", id));
        };
        api_key::Entity::delete_by_id(id).exec(&*tx).await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "api_key.delete",
                object_type: "api_key",
                object_id: Some(id),
                before: Some(json!({"name": row.name, "scopes": scope_names(&row)})),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a bearer token. `None` for anything unknown or malformed: the caller answers 401
    /// without saying which part was wrong.
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Option<Principal>> {
        let (id, secret) = match token
            .strip_prefix("rst_")
            .and_then(|rest| rest.split_once('_'))
        {
            Some((id, secret)) if !id.is_empty() && id.len() <= 32 => (id, secret),
            _ => (BOOTSTRAP_KEY_ID, token),
        };
        if secret.is_empty() || secret.len() > 512 {
            return Ok(None);
        }
        // `all`, not `one`: the id is the key, and `one`'s bound `LIMIT ?` would have SQLite
        // (3.49 on, which plans a bound LIMIT by its value) compile this statement anew for
        // every request instead of taking it from the connection's statement cache.
        let Some(row) = api_key::Entity::find()
            .filter(api_key::Column::Id.eq(id))
            .all(self.db())
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let presented = hash_api_secret(secret);
        if !constant_time_eq(presented.as_bytes(), row.secret_hash.as_bytes()) {
            return Ok(None);
        }
        self.note_key_use(&row);
        Ok(Some(Principal {
            key_id: row.id.clone(),
            scopes: scopes_of(&row),
        }))
    }

    /// Records the key's use, at most once per [`LAST_USE_RESOLUTION`]: checked against the
    /// row just read and this process's own note (so a burst of requests writes once), and
    /// written in the background, off the request's path.
    fn note_key_use(&self, row: &api_key::Model) {
        let now = chrono::Utc::now();
        let resolution = chrono::Duration::from_std(LAST_USE_RESOLUTION)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        if row.last_used_at.is_some_and(|at| now - at < resolution) {
            return;
        }
        if !self.key_uses().claim(&row.id, LAST_USE_RESOLUTION) {
            return;
        }
        let store = self.store().clone();
        let id = row.id.clone();
        tokio::spawn(async move {
            use sea_orm::sea_query::{Condition, Expr};
            let _turn = store.write_turn().await;
            let result = api_key::Entity::update_many()
                .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
                .filter(api_key::Column::Id.eq(id))
                .filter(
                    Condition::any()
                        .add(api_key::Column::LastUsedAt.is_null())
                        .add(api_key::Column::LastUsedAt.lt(now - resolution)),
                )
                .exec(store.conn())
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "Could not record an API key's last use");
            }
        });
    }
}

/// When this process last wrote each key's `last_used_at`.
#[derive(Default)]
pub struct KeyUses(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl KeyUses {
    /// Whether the caller should write `id`'s use now (and notes that it does).
    fn claim(&self, id: &str, every: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if seen
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < every)
        {
            return false;
        }
        // Bounded by the number of keys; forgotten entries would only cost an extra write.
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(id.to_owned(), now);
        true
    }
}
