//! Which credential key is current, as the database records it (table `credential_key`).
//!
//! Each process seals new app credentials with its own `ROSTER_SECRET_KEY`. After
//! `roster rotate-key`, a process still running on the old key would seal credentials with a
//! key the others no longer hold (and the operator means to retire). So the database records
//! the current key's id: a process claims it at start-up (a process that also holds the recorded
//! key as its previous one is the rotation's new key, and takes over), refuses to start on a key
//! the database has moved away from, and checks it in the transaction of every seal.
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Set,
};

use super::{Roster, ServiceError, ServiceResult};
use crate::store::entity::{app, credential_key};

/// The one row of `credential_key`.
const SLOT: &str = "current";

/// Makes `key_id` the recorded current key (inserting the row on first use).
pub(crate) async fn record_current(conn: &impl ConnectionTrait, key_id: &str) -> ServiceResult<()> {
    let row = credential_key::ActiveModel {
        slot: Set(SLOT.into()),
        key_id: Set(key_id.to_owned()),
        updated_at: Set(chrono::Utc::now()),
    };
    credential_key::Entity::insert(row)
        .on_conflict(
            OnConflict::column(credential_key::Column::Slot)
                .update_columns([
                    credential_key::Column::KeyId,
                    credential_key::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// The recorded current key, locked for the rest of the transaction on PostgreSQL (`exclusive`:
/// against sealers; shared: against a rotation). SQLite's writer turn serialises instead.
pub(crate) async fn recorded(
    conn: &impl ConnectionTrait,
    exclusive: bool,
) -> ServiceResult<Option<String>> {
    let query = credential_key::Entity::find_by_id(SLOT);
    let query = if exclusive {
        query.lock_exclusive()
    } else {
        query.lock_shared()
    };
    Ok(query.one(conn).await?.map(|row| row.key_id))
}

impl Roster {
    /// At start-up: records this process's key as the current one, unless the database has
    /// moved to another key that sealed credentials this process cannot open.
    pub async fn claim_credential_key(&self) -> ServiceResult<()> {
        let mine = self.secrets().key_id().to_owned();
        let tx = self.write_tx().await?;
        match recorded(&*tx, true).await? {
            Some(current) if current == mine => return Ok(()),
            // This process holds the recorded key as its previous one: it is the newer key.
            Some(current) if self.secrets().opens(&current) => {}
            Some(current) => {
                let sealed = app::Entity::find()
                    .filter(
                        sea_orm::Condition::any()
                            .add(app::Column::SecretKeyId.eq(current.as_str()))
                            .add(app::Column::TlsKeyId.eq(current.as_str())),
                    )
                    .count(&*tx)
                    .await?;
                if sealed > 0 {
                    return Err(ServiceError::Unavailable(format!(
                        "{sealed} app credential(s) are sealed with the current credential key \
                         `{current}`, and this process has key `{mine}` (an older or another \
                         key): set ROSTER_SECRET_KEY to the current key (while rotating, the old \
                         one goes in ROSTER_SECRET_KEY_PREVIOUS)"
                    )));
                }
            }
            None => {}
        }
        record_current(&*tx, &mine).await?;
        tx.commit().await?;
        Ok(())
    }

    /// In the transaction that stores a sealed credential: refuses when another process has
    /// made a newer key current since this one started, instead of sealing with the old key.
    pub(crate) async fn check_sealing_key(&self, conn: &impl ConnectionTrait) -> ServiceResult<()> {
        let mine = self.secrets().key_id();
        match recorded(conn, false).await? {
            Some(current) if current != mine => Err(ServiceError::Unavailable(format!(
                "the credential key was rotated to `{current}`; this instance still runs on key \
                 `{mine}` and does not seal new credentials with it: restart it with \
                 ROSTER_SECRET_KEY set to the current key"
            ))),
            _ => Ok(()),
        }
    }
}
