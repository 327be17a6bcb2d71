//! Statement texts that repeat. Each connection keeps its prepared statements by their text
//! (sqlx's statement cache), so a statement sent again is not parsed again. A list of values
//! or a multi-row insert whose length varies from call to call makes a new text each time,
//! which SQLite parses anew and which pushes the statements that do repeat out of the cache:
//! a profile of `roster bench throughput` found SQLite's parser at about 6 % of roster's CPU,
//! nearly all of it on such statements. Lists are therefore padded, and multi-row inserts
//! split, to lengths that are powers of two: a handful of texts per statement.
//!
//! Invariant: a padded list holds only values of the list given (its last one repeated), so
//! `x IN (…)` selects exactly what the list given selects.
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, IdenStatic, Statement,
};

/// `values`, padded to the next power of two by repeating the last value; empty stays empty.
#[must_use]
pub fn padded<T: Clone>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut values: Vec<T> = values.into_iter().collect();
    if let Some(last) = values.last().cloned() {
        values.resize(values.len().next_power_of_two(), last);
    }
    values
}

/// `items` in order, in chunks whose lengths are powers of two, the largest first, none longer
/// than `max` (rounded down to a power of two; at least 1).
pub fn chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = prev_power_of_two(max.max(1));
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = prev_power_of_two(rest.len()).min(max);
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        Some(chunk)
    })
}

/// [`chunks`], owned: `items` split into vectors of those lengths, in order, no row copied.
pub fn into_chunks<T>(items: Vec<T>, max: usize) -> impl Iterator<Item = Vec<T>> {
    let lengths: Vec<usize> = chunks(&items, max).map(<[T]>::len).collect();
    let mut items = items.into_iter();
    lengths
        .into_iter()
        .map(move |len| items.by_ref().take(len).collect())
}

/// `$first, $first+1, …`: `n` numbered placeholders.
#[must_use]
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `rows` in one statement, every row setting the columns the first one sets. The
/// text is written directly and the values are moved out of the rows: sea-orm's `insert_many`
/// builds a query tree and clones every value into it, which a profile of `roster bench
/// throughput` found at about a tenth of ingest's CPU (1 000 events make four statements of up
/// to 512 rows). Nothing for no rows; an error, before anything is sent, for a row that sets
/// other columns than the first.
pub async fn insert_rows<A>(conn: &impl ConnectionTrait, rows: Vec<A>) -> Result<(), DbErr>
where
    A: ActiveModelTrait,
{
    insert_or_update_rows(conn, rows, None).await
}

/// A conflict on `keys` updates the row there: its `update` columns take the inserted row's.
pub struct OnConflict<C: 'static> {
    pub keys: &'static [C],
    pub update: &'static [C],
}

/// [`insert_rows`]; with `on_conflict`, a row whose keys another row holds updates that row
/// (an upsert, `ON CONFLICT … DO UPDATE`, on both backends).
pub async fn insert_or_update_rows<A>(
    conn: &impl ConnectionTrait,
    rows: Vec<A>,
    on_conflict: Option<&OnConflict<<A::Entity as EntityTrait>::Column>>,
) -> Result<(), DbErr>
where
    A: ActiveModelTrait,
{
    use sea_orm::{EntityName, Iterable};
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let columns: Vec<<A::Entity as EntityTrait>::Column> =
        <A::Entity as EntityTrait>::Column::iter()
            .filter(|column| first.get(*column).is_set())
            .collect();
    let table = A::Entity::default().table_name().to_owned();
    let backend = conn.get_database_backend();
    let mut values = Vec::with_capacity(rows.len() * columns.len());
    let n = rows.len();
    for mut row in rows {
        for column in &columns {
            let Some(value) = row.take(*column).into_value() else {
                return Err(DbErr::Custom(format!(
                    "a row for `{table}` does not set `{}`, which the first row sets",
                    column.as_str()
                )));
            };
            values.push(bound(backend, value));
        }
        if <A::Entity as EntityTrait>::Column::iter().any(|column| row.get(column).is_set()) {
            return Err(DbErr::Custom(format!(
                "a row for `{table}` sets a column the first row does not"
            )));
        }
    }
    let quoted = |columns: &[<A::Entity as EntityTrait>::Column]| -> Vec<String> {
        columns
            .iter()
            .map(|column| format!("\"{}\"", column.as_str()))
            .collect()
    };
    let mut sql = format!(
        "INSERT INTO \"{table}\" ({}) VALUES {}",
        quoted(&columns).join(", "),
        value_tuples(backend, n, columns.len())
    );
    if let Some(on_conflict) = on_conflict {
        let set: Vec<String> = quoted(on_conflict.update)
            .into_iter()
            .map(|column| format!("{column} = excluded.{column}"))
            .collect();
        sql.push_str(&format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            quoted(on_conflict.keys).join(", "),
            set.join(", ")
        ));
    }
    conn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .map(|_| ())
}

/// A value as it is bound. SQLite stores JSON as its text, so a JSON value is bound as that
/// text: sea-orm clones every value it binds, and a string is one copy where a JSON tree is a
/// copy of each of its nodes (and a second tree to drop).
fn bound(backend: DbBackend, value: sea_orm::Value) -> sea_orm::Value {
    match (backend, value) {
        (DbBackend::Sqlite, sea_orm::Value::Json(json)) => {
            // serde_json's writer into a String's bytes, not `Display` (which goes through
            // `fmt::Write` a piece at a time): the same compact text, about a third less of
            // the bench's profile.
            sea_orm::Value::String(
                json.map(|json| serde_json::to_string(&*json).unwrap_or_else(|_| json.to_string())),
            )
        }
        (_, value) => value,
    }
}

/// `(…), (…), …`: the placeholders of `rows` rows of `columns` values each, numbered in row
/// order where they are numbered. Written into one buffer: a 512-row insert has thousands.
#[must_use]
pub fn value_tuples(backend: DbBackend, rows: usize, columns: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows * (columns * 6 + 4));
    for row in 0..rows {
        out.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            // SQLite gets anonymous `?`: it takes `$n` for a named parameter and looks each
            // one up among those before it, which made a 512-row insert's parse quadratic.
            if backend == DbBackend::Sqlite {
                out.push('?');
            } else {
                let _ = write!(out, "${}", row * columns + column + 1);
            }
        }
        out.push(')');
    }
    out
}

/// The largest power of two not above `n` (`n` ≥ 1).
fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_padded_list_has_a_power_of_two_length_and_only_the_values_given() {
        assert!(padded(Vec::<i64>::new()).is_empty());
        assert_eq!(padded([7]), vec![7]);
        assert_eq!(padded([1, 2, 3]), vec![1, 2, 3, 3]);
        let five = padded(1..=5);
        assert_eq!(five.len(), 8);
        assert_eq!(
            five.iter().copied().collect::<BTreeSet<_>>(),
            (1..=5).collect()
        );
        assert_eq!(padded(1..=8).len(), 8);
    }

    #[test]
    fn chunks_cover_every_item_in_order_with_few_distinct_lengths() {
        let mut lengths = BTreeSet::new();
        for n in 0..=1_100usize {
            let items: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = chunks(&items, 512).collect();
            assert_eq!(parts.concat(), items, "{n} items");
            for part in &parts {
                assert!(
                    part.len().is_power_of_two() && part.len() <= 512,
                    "{n}: {}",
                    part.len()
                );
                lengths.insert(part.len());
            }
        }
        // 1, 2, 4, …, 512: ten texts per statement, whatever the batch sizes.
        assert_eq!(lengths.len(), 10);
        // A maximum that is no power of two is rounded down.
        assert!(chunks(&[0u8; 1000], 500).all(|c| c.len() <= 256));
    }

    #[test]
    fn owned_chunks_are_the_borrowed_ones() {
        let items: Vec<String> = (0..37).map(|i| i.to_string()).collect();
        let borrowed: Vec<Vec<String>> = chunks(&items, 16).map(<[String]>::to_vec).collect();
        let owned: Vec<Vec<String>> = into_chunks(items, 16).collect();
        assert_eq!(owned, borrowed);
        assert_eq!(
            owned.iter().map(Vec::len).collect::<Vec<_>>(),
            [16, 16, 4, 1]
        );
    }

    /// A migrated SQLite database in memory, on one connection: each connection to `:memory:`
    /// is a database of its own.
    async fn migrated_memory_db() -> sea_orm::DatabaseConnection {
        use migration::MigratorTrait;
        let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
        options.max_connections(1).sqlx_logging(false);
        let conn = sea_orm::Database::connect(options).await.expect("connect");
        migration::Migrator::up(&conn, None).await.expect("migrate");
        conn
    }

    #[tokio::test]
    async fn inserted_rows_read_back_as_written_and_a_row_of_other_columns_is_refused() {
        use crate::store::entity::audit;
        use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};
        let conn = migrated_memory_db().await;
        let row = |n: i64| audit::ActiveModel {
            api_key_id: Set((n % 2 == 0).then(|| format!("key-{n}"))),
            action: Set(format!("action-{n}")),
            object_type: Set("hr_event".into()),
            object_id: Set(None),
            before: Set(None),
            after: Set(Some(serde_json::json!({"n": n, "text": "it's \"quoted\""}))),
            created_at: Set(
                chrono::DateTime::from_timestamp(1_700_000_000 + n, 0).unwrap_or_default()
            ),
            ..Default::default()
        };
        insert_rows(&conn, (0..3).map(row).collect())
            .await
            .expect("insert");
        insert_rows(&conn, Vec::<audit::ActiveModel>::new())
            .await
            .expect("no rows");
        let stored = audit::Entity::find()
            .order_by_asc(audit::Column::Id)
            .all(&conn)
            .await
            .expect("read");
        assert_eq!(stored.len(), 3);
        for (n, got) in (0..3).zip(&stored) {
            assert_eq!(got.action, format!("action-{n}"));
            assert_eq!(got.api_key_id, (n % 2 == 0).then(|| format!("key-{n}")));
            assert_eq!(got.after.as_ref().map(|a| a["n"].clone()), Some(n.into()));
            assert_eq!(
                got.after.as_ref().map(|a| a["text"].clone()),
                Some("it's \"quoted\"".into())
            );
            assert_eq!(got.created_at.timestamp(), 1_700_000_000 + n);
        }
        // A row leaving out a column the first sets, or setting one it leaves out: nothing sent.
        let mut short = row(3);
        short.before = sea_orm::ActiveValue::NotSet;
        let err = insert_rows(&conn, vec![row(4), short]).await;
        assert!(
            matches!(&err, Err(DbErr::Custom(m)) if m.contains("`before`")),
            "{err:?}"
        );
        let mut long = row(5);
        long.id = Set(99);
        assert!(insert_rows(&conn, vec![row(6), long]).await.is_err());
        assert_eq!(
            audit::Entity::find().all(&conn).await.expect("read").len(),
            3
        );
    }

    #[tokio::test]
    async fn an_upserted_row_updates_only_its_update_columns_of_the_row_with_its_keys() {
        use crate::store::entity::hr_event;
        use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};
        let conn = migrated_memory_db().await;
        let row = |event: &str, result: &str, payload: serde_json::Value| hr_event::ActiveModel {
            event_id: Set(event.to_owned()),
            event_type: Set("joiner".into()),
            employee_id: Set(format!("E-{event}")),
            occurred_at: Set(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()),
            payload: Set(payload),
            payload_hash: Set(None),
            result: Set(result.to_owned()),
            detail: Set(Some(format!("{event} {result}"))),
            api_key_id: Set(None),
            received_at: Set(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()),
            ..Default::default()
        };
        const UPSERT: OnConflict<hr_event::Column> = OnConflict {
            keys: &[hr_event::Column::EventId],
            update: &[hr_event::Column::Result, hr_event::Column::Detail],
        };
        insert_or_update_rows(
            &conn,
            vec![
                row("a", "applied", serde_json::json!({"v": 1})),
                row("b", "applied", serde_json::json!({"v": 1})),
            ],
            Some(&UPSERT),
        )
        .await
        .expect("insert");
        insert_or_update_rows(
            &conn,
            vec![
                row("b", "stale", serde_json::json!({"v": 2})),
                row("c", "applied", serde_json::json!({"v": 2})),
            ],
            Some(&UPSERT),
        )
        .await
        .expect("upsert");
        let stored = hr_event::Entity::find()
            .order_by_asc(hr_event::Column::Id)
            .all(&conn)
            .await
            .expect("read");
        let seen: Vec<(i64, &str, &str, Option<&str>, i64)> = stored
            .iter()
            .map(|e| {
                (
                    e.id,
                    e.event_id.as_str(),
                    e.result.as_str(),
                    e.detail.as_deref(),
                    e.payload["v"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        // `b` keeps its id and its payload (not an update column); `c` is new.
        assert_eq!(
            seen,
            vec![
                (1, "a", "applied", Some("a applied"), 1),
                (2, "b", "stale", Some("b stale"), 1),
                (stored[2].id, "c", "applied", Some("c applied"), 2),
            ]
        );
        assert!(stored[2].id > 2);
    }

    #[test]
    fn value_tuples_number_their_placeholders_in_row_order_where_they_are_numbered() {
        assert_eq!(
            value_tuples(DbBackend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(value_tuples(DbBackend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(value_tuples(DbBackend::Sqlite, 0, 2), "");
    }

    #[test]
    fn placeholders_are_numbered_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
    }
}
