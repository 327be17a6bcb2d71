//! Cursor paging, shared by every list: `?cursor=&limit=` answering `{items, next_cursor}`.
//! A list reads at most `limit` rows after the cursor, in a total order (a unique key last);
//! a full page has a `next_cursor` (the last row's key), a short one ends the listing.
use super::problem::ApiError;

/// A page size from the query: 1..=`max`, `default` when absent.
pub fn page_limit(limit: Option<u64>, default: u64, max: u64) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid(format!("limit: must be 1 to {max}")))
    }
}

/// The cursor of the page after `rows`, read with `limit`: the last row's key when the page is
/// full, none when it is short (the last page). A full last page costs one empty read more.
pub fn next_cursor<T, C>(rows: &[T], limit: u64, key: impl FnOnce(&T) -> C) -> Option<C> {
    if rows.len() as u64 == limit {
        rows.last().map(key)
    } else {
        None
    }
}
