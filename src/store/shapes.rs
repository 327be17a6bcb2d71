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

    #[test]
    fn placeholders_are_numbered_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
    }
}
