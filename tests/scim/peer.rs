//! The same scenarios against `scim2-server`, a SCIM server nobody here wrote. Run under
//! `../shared/peers/with-peer.sh scim2-server cargo test --test scim`.
use std::time::Duration;

use roster::scim::{ScimClient, TargetConfig};

use crate::helpers::{Calls, bearer, client, unique};
use crate::scenarios;

/// The peer has a listen backlog of 5 and speaks HTTP/1.0: one peer test at a time.
static PEER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client for the peer, or `None` (printed) when it is not running; under `CI=true` a
/// missing peer fails the test instead.
fn peer_client(tweak: impl FnOnce(&mut TargetConfig)) -> Option<(ScimClient, Calls)> {
    let (Ok(base), Ok(token)) = (std::env::var("PEER_BASE_URL"), std::env::var("PEER_TOKEN"))
    else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PEER_BASE_URL/PEER_TOKEN unset under CI: run under with-peer.sh scim2-server");
        }
        eprintln!(
            "skipped: PEER_BASE_URL unset (run under ../shared/peers/with-peer.sh scim2-server)"
        );
        return None;
    };
    Some(client(&base, bearer(&token), |c| {
        c.timeout = Duration::from_secs(15);
        tweak(c);
    }))
}

#[tokio::test]
async fn peer_users_round_trip() {
    let _one = PEER.lock().await;
    let Some((c, _)) = peer_client(|_| {}) else {
        return;
    };
    scenarios::users_crud(&c).await;
}

#[tokio::test]
async fn peer_group_members_are_added_and_removed() {
    let _one = PEER.lock().await;
    let Some((c, calls)) = peer_client(|_| {}) else {
        return;
    };
    scenarios::groups_membership(&c).await;
    // The peer answers PATCH with 204 and no body.
    assert!(
        calls
            .all()
            .iter()
            .any(|r| r.method == "PATCH" && r.status == Some(204))
    );
}

#[tokio::test]
async fn peer_hostile_filters_find_exactly_one() {
    let _one = PEER.lock().await;
    let Some((c, _)) = peer_client(|_| {}) else {
        return;
    };
    scenarios::hostile_filters(&c).await;
}

#[tokio::test]
async fn peer_answers_merged_look_ups_in_one_listing() {
    let _one = PEER.lock().await;
    // Listings that prove nothing: the look-ups are one merged `or` filter.
    let Some((c, calls)) = peer_client(|c| c.quirks.user_listings_complete = false) else {
        return;
    };
    scenarios::merged_lookups(&c, &calls).await;
}

#[tokio::test]
async fn peer_conflicts_and_missing_are_classified() {
    let _one = PEER.lock().await;
    let Some((c, _)) = peer_client(|_| {}) else {
        return;
    };
    scenarios::conflicts_and_missing(&c).await;
}

#[tokio::test]
async fn peer_weak_etags_get_412_and_overwrite_nothing() {
    let _one = PEER.lock().await;
    let Some((c, calls)) = peer_client(|_| {}) else {
        return;
    };
    assert!(c.capabilities().await.etag, "the peer advertises ETags");
    scenarios::etag_retry(&c, &calls).await;
}

#[tokio::test]
async fn peer_lists_250_users_once_each() {
    let _one = PEER.lock().await;
    let Some((c, calls)) = peer_client(|c| c.quirks.page_size = 1000) else {
        return;
    };
    let prefix = unique("page");
    let mut created = scenarios::create_users(&c, &prefix, 250, 4).await;
    calls.clear();
    let mut listed = scenarios::list_prefix(&c, &prefix, 100).await;
    assert_eq!(listed.len(), 250);
    created.sort();
    listed.sort();
    assert_eq!(listed, created);
    let pages = calls
        .all()
        .iter()
        .filter(|r| r.path.contains("startIndex="))
        .count();
    assert_eq!(pages, 3, "stopped by totalResults");
    for id in &created {
        c.users().delete(id).await.unwrap();
    }
}

/// Overlapping pages against the peer: each page after the first is asked from the last
/// account of the one before and begins with it, none is `shifted`, and every account comes
/// once (the repeated one is not yielded twice).
#[tokio::test]
async fn peer_overlapping_pages_yield_each_account_once() {
    use futures::TryStreamExt as _;
    let _one = PEER.lock().await;
    let Some((c, calls)) = peer_client(|_| {}) else {
        return;
    };
    let prefix = unique("overlap");
    let mut created = scenarios::create_users(&c, &prefix, 7, 2).await;
    calls.clear();
    let query = roster::scim::ListQuery {
        filter: Some(format!(
            "userName sw {}",
            roster::scim::filter::json_string(&prefix)
        )),
        page_size: 3,
        overlapping: true,
        ..roster::scim::ListQuery::default()
    };
    let pages: Vec<roster::scim::Page> = c.users().list_pages(query).try_collect().await.unwrap();
    assert!(pages.iter().all(|p| !p.shifted && !p.wrapped), "{pages:?}");
    let mut listed: Vec<String> = pages
        .iter()
        .flat_map(|p| crate::helpers::ids(&p.resources))
        .collect();
    assert_eq!(listed.len(), 7, "each once: {listed:?}");
    created.sort();
    listed.sort();
    assert_eq!(listed, created);
    // 3 new, then 2 new after each repeated last account (3 + 2 + 2): each page asked from
    // the last position of the one before.
    let starts: Vec<String> = calls
        .all()
        .iter()
        .filter_map(|r| r.path.split("startIndex=").nth(1))
        .map(|rest| rest.split('&').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(starts, ["1", "3", "5"]);
    for id in &created {
        c.users().delete(id).await.unwrap();
    }
}

#[tokio::test]
async fn peer_test_connection_reports_capabilities() {
    let _one = PEER.lock().await;
    let Some((c, _)) = peer_client(|_| {}) else {
        return;
    };
    let report = c.test_connection().await;
    assert!(report.reachable && report.auth_ok, "{report:?}");
    let caps = report.capabilities.unwrap();
    assert!(caps.patch && caps.etag && caps.filter);
    assert_eq!(caps.filter_max_results, Some(1000));
}
