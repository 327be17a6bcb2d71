use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use roster::dev_target::{DevTargetArgs, Kind};
use roster::scim::id_of;

use crate::helpers::{TestTarget, ids, spawn_target, spawn_target_with, user};

fn seed(t: &TestTarget, n: usize) {
    for i in 0..n {
        t.target
            .insert(Kind::User, user(&format!("user{i:04}")))
            .unwrap();
    }
}

/// `count=` of every listing call.
fn counts(t: &TestTarget) -> Vec<u32> {
    t.calls
        .all()
        .iter()
        .filter_map(|c| c.path.split("count=").nth(1))
        .map(|n| n.split('&').next().unwrap().parse().unwrap())
        .collect()
}

async fn list_all(t: &TestTarget, page_size: u32) -> Vec<String> {
    let listed: Vec<serde_json::Value> = t
        .client
        .users()
        .list(page_size)
        .try_collect()
        .await
        .unwrap();
    ids(&listed)
}

fn assert_all_once(listed: &[String], n: usize) {
    assert_eq!(listed.len(), n);
    assert_eq!(
        listed.iter().collect::<HashSet<_>>().len(),
        n,
        "no duplicates"
    );
}

#[tokio::test]
async fn listing_250_users_yields_each_once() {
    let t = spawn_target(DevTargetArgs::default()).await;
    seed(&t, 250);
    let listed = list_all(&t, 100).await;
    assert_all_once(&listed, 250);
    assert_eq!(counts(&t), [100, 100, 100]);
}

#[tokio::test]
async fn page_size_is_clamped_to_the_advertised_maximum() {
    let t = spawn_target(DevTargetArgs {
        max_page_size: 50,
        ..DevTargetArgs::default()
    })
    .await;
    seed(&t, 250);
    let listed = list_all(&t, 500).await;
    assert_all_once(&listed, 250);
    assert_eq!(counts(&t), [50; 5]);
}

#[tokio::test]
async fn page_size_is_clamped_to_the_quirks() {
    let t = spawn_target_with(DevTargetArgs::default(), |c| c.quirks.page_size = 40).await;
    seed(&t, 100);
    assert_all_once(&list_all(&t, 500).await, 100);
    assert_eq!(counts(&t), [40; 3]);
}

#[tokio::test]
async fn short_pages_from_a_server_that_advertises_more_are_followed() {
    let args = DevTargetArgs {
        max_page_size: 30,
        advertised_max_results: Some(1000),
        ..DevTargetArgs::default()
    };
    let t = spawn_target(args).await;
    seed(&t, 250);
    assert_all_once(&list_all(&t, 100).await, 250);
    // 250 / 30 = 9 pages; startIndex advanced by what arrived.
    assert_eq!(counts(&t).len(), 9);
}

#[tokio::test]
async fn a_server_wrapping_to_page_one_is_not_read_twice() {
    let t = spawn_target(DevTargetArgs {
        paging_wraps: true,
        ..DevTargetArgs::default()
    })
    .await;
    seed(&t, 250);
    let mut stream = t.client.users().list(100);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(
            id_of(&stream.next().await.unwrap().unwrap())
                .unwrap()
                .to_owned(),
        );
    }
    // The collection shrinks under the listing: startIndex=101 is now past the end, and this
    // server answers page 1 again.
    for id in ids(&t.target.users_snapshot()).iter().skip(50) {
        t.client.users().delete(id).await.unwrap();
    }
    let rest: Vec<serde_json::Value> =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.try_collect())
            .await
            .expect("listing ends")
            .unwrap();
    seen.extend(ids(&rest));
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
}

#[tokio::test]
async fn an_empty_target_lists_nothing_in_one_call() {
    let t = spawn_target(DevTargetArgs::default()).await;
    assert!(list_all(&t, 10).await.is_empty());
    assert_eq!(counts(&t).len(), 1);
}

fn overlapping(page_size: u32) -> roster::scim::ListQuery {
    roster::scim::ListQuery {
        page_size,
        overlapping: true,
        ..roster::scim::ListQuery::default()
    }
}

/// Overlapping pages: each asked from the last account of the page before, which is not
/// yielded twice; a quiet listing yields every account once, and no page is `shifted`.
#[tokio::test]
async fn overlapping_pages_yield_each_account_once() {
    let t = spawn_target(DevTargetArgs::default()).await;
    seed(&t, 7);
    let pages: Vec<roster::scim::Page> = t
        .client
        .users()
        .list_pages(overlapping(3))
        .try_collect()
        .await
        .unwrap();
    assert!(pages.iter().all(|p| !p.shifted && !p.wrapped));
    let listed: Vec<String> = pages.iter().flat_map(|p| ids(&p.resources)).collect();
    assert_eq!(
        listed,
        ids(&t.target.users_snapshot()),
        "each once, in order"
    );
    // 3 new, then 2 new after each repeated last account: 3 + 2 + 2.
    assert_eq!(counts(&t).len(), 3);
}

/// One account removed and another added between two pages: `totalResults` is what it was,
/// and plain paging would step over the account that moved onto the page already read.
/// Overlapping pages see the move: the next page does not begin with the last account read.
#[tokio::test]
async fn overlapping_pages_see_the_listing_move_under_the_walk() {
    let t = spawn_target(DevTargetArgs::default()).await;
    seed(&t, 5);
    let before = ids(&t.target.users_snapshot());
    let mut pages = t.client.users().list_pages(overlapping(2));
    let first = pages.next().await.unwrap().unwrap();
    assert_eq!(ids(&first.resources), before[..2]);
    t.client.users().delete(&before[0]).await.unwrap();
    t.target.insert(Kind::User, user("late")).unwrap();
    let second = pages.next().await.unwrap().unwrap();
    assert_eq!(second.total, Some(5), "as many as before");
    assert!(second.shifted, "{second:?}");
}
