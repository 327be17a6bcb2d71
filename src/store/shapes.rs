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
    let mut tuples = Vec::with_capacity(rows.len());
    for mut row in rows {
        let numbered_from = values.len() + 1;
        for column in &columns {
            let Some(value) = row.take(*column).into_value() else {
                return Err(DbErr::Custom(format!(
                    "a row for `{table}` does not set `{}`, which the first row sets",
                    column.as_str()
                )));
            };
            values.push(value);
        }
        if <A::Entity as EntityTrait>::Column::iter().any(|column| row.get(column).is_set()) {
            return Err(DbErr::Custom(format!(
                "a row for `{table}` sets a column the first row does not"
            )));
        }
        tuples.push(format!(
            "({})",
            row_placeholders(backend, numbered_from, columns.len())
        ));
    }
    let names: Vec<String> = columns
        .iter()
        .map(|column| format!("\"{}\"", column.as_str()))
        .collect();
    let sql = format!(
        "INSERT INTO \"{table}\" ({}) VALUES {}",
        names.join(", "),
        tuples.join(", ")
    );
    conn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .map(|_| ())
}

/// A row's placeholders. SQLite gets anonymous `?`: it takes `$n` for a named parameter and
/// looks each one up among those before it, which made a 512-row insert's parse quadratic.
fn row_placeholders(backend: DbBackend, first: usize, n: usize) -> String {
    if backend == DbBackend::Sqlite {
        vec!["?"; n].join(", ")
    } else {
        placeholders(first, n)
    }
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

    #[tokio::test]
    async fn inserted_rows_read_back_as_written_and_a_row_of_other_columns_is_refused() {
        use crate::store::entity::audit;
        use migration::MigratorTrait;
        use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};
        // One connection: each connection to `:memory:` is a database of its own.
        let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
        options.max_connections(1).sqlx_logging(false);
        let conn = sea_orm::Database::connect(options).await.expect("connect");
        migration::Migrator::up(&conn, None).await.expect("migrate");
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

    #[test]
    fn placeholders_are_numbered_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
    }
}
