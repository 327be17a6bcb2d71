//! Delivery's merged matching look-ups against a target that refuses `or` filters: every job
//! still finds what its own look-up finds, and the target is asked one value at a time after.
use std::sync::Arc;

use poem::web::Query;
use poem::{Route, get, handler};
use roster::delivery::lookups::LookupBatcher;
// The stub reads filters with the `scim_v2` crate, not roster's own parser: a bug in roster's
// filter syntax must not be read back the same way here.
use scim_v2::filter::{AttrExp, CompValue, CompareOp, Filter};
use serde_json::{Value, json};

use crate::helpers::{bearer, client, serve};

#[derive(serde::Deserialize)]
struct ListParams {
    filter: Option<String>,
}

fn scim(status: u16, body: Value) -> poem::Response {
    crate::common::scim_answer(status, &body)
}

/// One account, `known`; `userName eq` alone is understood, anything else is `invalidFilter`.
#[handler]
fn users(Query(params): Query<ListParams>) -> poem::Response {
    let parsed = params.filter.as_deref().map(str::parse::<Filter>);
    let Some(Ok(Filter::Attr(AttrExp::Comparison(attr, CompareOp::Eq, CompValue::Str(name))))) =
        parsed
    else {
        return scim(
            400,
            json!({"schemas": [roster::scim::schemas::ERROR], "status": "400",
                   "scimType": "invalidFilter", "detail": "only one comparison per filter"}),
        );
    };
    assert_eq!(
        (attr.uri, attr.name, attr.sub_attr),
        (None, "userName".to_owned(), None)
    );
    let resources: Vec<Value> = if name.eq_ignore_ascii_case("known") {
        vec![json!({"id": "k1", "userName": "known", "schemas": [roster::scim::schemas::USER]})]
    } else {
        Vec::new()
    };
    scim(
        200,
        json!({"schemas": [roster::scim::schemas::LIST_RESPONSE],
               "totalResults": resources.len(), "startIndex": 1,
               "itemsPerPage": resources.len(), "Resources": resources}),
    )
}

#[handler]
fn config() -> poem::Response {
    scim(200, crate::common::stub_service_provider_config())
}

/// A target in trouble: every listing answers 503 with `Retry-After`.
#[handler]
fn unavailable() -> poem::Response {
    poem::Response::builder()
        .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
        .header("Retry-After", "1")
        .content_type("application/scim+json")
        .body(
            json!({"schemas": [roster::scim::schemas::ERROR], "status": "503", "detail": "busy"})
                .to_string(),
        )
}

/// Serves `listing` under `/v2/Users`; returns the base URL.
async fn target(listing: impl poem::Endpoint + 'static) -> String {
    let app = Route::new()
        .at("/v2/Users", listing)
        .at("/v2/ServiceProviderConfig", get(config));
    format!("http://{}/v2", serve(app).await)
}

#[tokio::test]
async fn a_throttled_merged_look_up_is_every_job_s_answer_not_a_burst_of_single_ones() {
    let base = target(get(unavailable)).await;
    let (c, calls) = client(&base, bearer("t"), |_| {});
    let batcher = Arc::new(LookupBatcher::default());
    let asked = ["a", "b", "c"];
    let found = crate::helpers::find_all(&batcher, &c, &asked).await;
    for result in found {
        let error = result.expect_err("the target is unavailable");
        assert_eq!(error.status(), Some(503));
        assert!(error.retry_after().is_some(), "{error}");
    }
    // One call (a read of the target's listing, three look-ups costing one merged call or
    // one page alike), its answer shared.
    let statuses: Vec<Option<u16>> = calls
        .all()
        .iter()
        .filter(|c| c.path.contains("/v2/Users"))
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [Some(503)], "one call, its answer shared");
}

#[tokio::test]
async fn a_target_refusing_or_filters_is_asked_one_value_at_a_time() {
    let base = target(get(users)).await;
    let (c, calls) = client(&base, bearer("t"), |_| {});
    let batcher = Arc::new(LookupBatcher::default());
    let asked = ["KNOWN", "a", "b"];
    let lookups = || crate::helpers::find_all(&batcher, &c, &asked);

    let found = lookups().await;
    let counts: Vec<usize> = found.into_iter().map(|f| f.unwrap().len()).collect();
    assert_eq!(counts, [1, 0, 0]);
    // The merged listing was refused once; each value was then asked alone.
    assert_eq!(
        calls.listing_statuses(),
        [Some(400), Some(200), Some(200), Some(200)]
    );

    calls.clear();
    let found = lookups().await;
    assert_eq!(
        found
            .into_iter()
            .map(|f| f.unwrap().len())
            .collect::<Vec<_>>(),
        [1, 0, 0]
    );
    assert_eq!(
        calls.listing_statuses(),
        [Some(200), Some(200), Some(200)],
        "no merged listing is tried again"
    );
}

/// A target that reads no filter values from a URL (`scimType: sensitive`) and answers
/// `POST /Users/.search` instead, with pages that hold accounts not asked for; its
/// PATCH and DELETE answer 200 with a body that is not JSON.
#[handler]
fn sensitive_listing() -> poem::Response {
    scim(
        403,
        json!({"schemas": [roster::scim::schemas::ERROR], "status": "403",
               "scimType": "sensitive", "detail": "no personal data in URLs"}),
    )
}

#[derive(serde::Deserialize)]
struct SearchRequest {
    schemas: Vec<String>,
    filter: Option<String>,
    #[serde(rename = "startIndex")]
    start_index: u64,
}

#[handler]
fn search(poem::web::Json(request): poem::web::Json<SearchRequest>) -> poem::Response {
    assert_eq!(request.schemas, [roster::scim::schemas::SEARCH_REQUEST]);
    assert!(request.filter.is_some_and(|f| f.contains("userName eq")));
    // Bob and Carl answer a filter the target did not apply. Page 2 is asked from page 1's
    // last account (the pages overlap by one, so that a listing that moved is seen).
    let page = match request.start_index {
        1 => json!([{"id": "a1", "userName": "ada"}, {"id": "b1", "userName": "bob"}]),
        2 => json!([{"ID": "b1", "UserName": "bob"}, {"id": "c1", "userName": "carl"}]),
        _ => json!([]),
    };
    scim(
        200,
        json!({"schemas": [roster::scim::schemas::LIST_RESPONSE], "totalResults": 3,
               "startIndex": request.start_index, "itemsPerPage": 2, "Resources": page}),
    )
}

#[handler]
fn not_json() -> poem::Response {
    poem::Response::builder()
        .status(poem::http::StatusCode::OK)
        .content_type("text/html")
        .body("<html>done</html>")
}

#[handler]
fn small_pages() -> poem::Response {
    scim(
        200,
        json!({"patch": {"supported": true}, "filter": {"supported": true, "maxResults": 2}}),
    )
}

#[tokio::test]
async fn a_sensitive_target_is_searched_by_post_and_answers_are_checked() {
    let app = Route::new()
        .at("/v2/Users", get(sensitive_listing))
        .at("/v2/Users/.search", poem::post(search))
        .at("/v2/Users/a1", poem::patch(not_json).delete(not_json))
        .at("/v2/ServiceProviderConfig", get(small_pages));
    let base = format!("http://{}/v2", serve(app).await);
    let (c, calls) = client(&base, bearer("t"), |_| {});
    let found = c.users().find_by("userName", "ADA").await.expect("found");
    assert_eq!(
        found,
        [json!({"id": "a1", "userName": "ada"})],
        "one account, once, and only the one asked for"
    );
    let listings: Vec<String> = calls
        .all()
        .iter()
        .filter(|r| r.path.contains("Users"))
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.status))
        .collect();
    assert_eq!(listings.len(), 3, "{listings:?}");
    assert!(listings[0].starts_with("GET") && listings[0].contains("Some(403)"));
    assert_eq!(listings[1], "POST /v2/Users/.search Some(200)");
    assert_eq!(listings[2], "POST /v2/Users/.search Some(200)");
    // A 2xx without JSON to PATCH or DELETE is a success.
    let patched = c
        .users()
        .patch(
            "a1",
            &roster::scim::PatchRequest::new().replace("active", json!(false)),
        )
        .await
        .expect("a 200 to PATCH is a success");
    assert_eq!(patched, None);
    assert_eq!(
        c.users().delete("a1").await.expect("a 200 to DELETE"),
        roster::scim::Deleted::Deleted
    );
}

#[derive(serde::Deserialize)]
struct PageParams {
    filter: Option<String>,
    #[serde(rename = "startIndex")]
    start_index: Option<usize>,
    count: Option<usize>,
}

/// Users `a`, `b` and `c`, listed in that order, pages of at most 2. Once a listing's first
/// page is served, `a` is removed and `d` added: `totalResults` stays 3 while `c` and `d` move
/// up a place. `userName eq` filters (joined by `or`) are answered from the accounts as they
/// are then.
fn moving_listing() -> impl poem::Endpoint {
    use std::sync::atomic::{AtomicBool, Ordering};
    let moved = Arc::new(AtomicBool::new(false));
    poem::endpoint::make_sync(move |request: poem::Request| {
        let Ok(params) = request.params::<PageParams>() else {
            return scim(400, json!({"detail": "bad query"}));
        };
        let now: &[&str] = if moved.load(Ordering::SeqCst) {
            &["b", "c", "d"]
        } else {
            &["a", "b", "c"]
        };
        let account = |name: &&str| {
            json!({"id": format!("{name}1"), "userName": name,
                   "schemas": [roster::scim::schemas::USER]})
        };
        let (total, page): (usize, Vec<Value>) = match params.filter {
            Some(filter) => {
                let found: Vec<Value> = now
                    .iter()
                    .filter(|name| filter.contains(&format!("\"{name}\"")))
                    .map(account)
                    .collect();
                (found.len(), found)
            }
            None => {
                let start = params.start_index.unwrap_or(1).max(1);
                let count = params.count.unwrap_or(2).min(2);
                let page = now
                    .iter()
                    .skip(start - 1)
                    .take(count)
                    .map(account)
                    .collect();
                if start == 1 {
                    moved.store(true, Ordering::SeqCst);
                }
                (now.len(), page)
            }
        };
        scim(
            200,
            json!({"schemas": [roster::scim::schemas::LIST_RESPONSE], "totalResults": total,
                   "startIndex": params.start_index.unwrap_or(1), "itemsPerPage": page.len(),
                   "Resources": page}),
        )
    })
}

/// Paged by index, a listing during which one account was removed and another added counts
/// as many accounts as it read, yet stepped over one: `c` moved onto the page already read.
/// Such a listing proves no absence (its pages overlap by one account, and the next page did
/// not begin where the last ended); `c` is found by filter, never taken for absent and
/// created a second time.
#[tokio::test]
async fn a_listing_that_moves_under_its_pages_proves_no_absence() {
    let base = target(moving_listing()).await;
    // One value per filter: three look-ups cost more calls than the two pages of the listing.
    let (c, calls) = client(&base, bearer("t"), |settings| {
        settings.quirks.page_size = 2;
        settings.quirks.filter_or = false;
    });
    let batcher = Arc::new(LookupBatcher::default());
    let found = crate::helpers::find_all(&batcher, &c, &["c", "y", "z"]).await;
    let counts: Vec<usize> = found.into_iter().map(|f| f.unwrap().len()).collect();
    assert_eq!(counts, [1, 0, 0], "c was there all along");
    let paths: Vec<String> = calls.all().into_iter().map(|c| c.path).collect();
    assert!(
        paths.iter().any(|p| p.contains("filter=")),
        "asked by filter after the listing: {paths:?}"
    );
}

/// A target that serves one page of an `or` look-up however many accounts match (no paging,
/// pages of 2): the merged answer falls short of its own `totalResults`, so it answers no
/// value absent; each value is then asked alone, and every account is found.
#[tokio::test]
async fn a_merged_look_up_cut_short_of_its_total_answers_no_value_absent() {
    let names = ["cut-1", "cut-2", "cut-3"];
    let t = serving_one_page_of_two(&names, true).await;
    let short = t
        .client
        .users()
        .find_by_any("userName", &names)
        .await
        .expect_err("a listing short of its total is no answer");
    assert_short_of_its_total(&short);
    let batcher = Arc::new(LookupBatcher::default());
    let found = crate::helpers::find_all(&batcher, &t.client, &names).await;
    let counts: Vec<usize> = found.into_iter().map(|f| f.unwrap().len()).collect();
    assert_eq!(
        counts,
        [1, 1, 1],
        "every account found, none taken for absent"
    );
}

/// A target that cannot filter is looked up by reading its whole listing: one that serves a
/// single page of 2 however many accounts it holds (no paging) falls short of its own
/// `totalResults`, so an account on the page it never served is no answer of "absent" —
/// which would have it created a second time — but an incomplete listing, asked again later.
#[tokio::test]
async fn a_look_up_by_whole_listing_cut_short_of_its_total_is_no_answer() {
    let t = serving_one_page_of_two(&["whole-1", "whole-2", "whole-3"], false).await;
    let short = t
        .client
        .users()
        .find_by("userName", "whole-3")
        .await
        .expect_err("a listing short of its total is no answer");
    assert_short_of_its_total(&short);
}

/// A dev-target holding `names` that answers every listing with one page of 2 (no paging),
/// and a client for it that filters or not.
async fn serving_one_page_of_two(names: &[&str], filters: bool) -> crate::helpers::TestTarget {
    let t = crate::helpers::spawn_target_with(
        roster::dev_target::DevTargetArgs {
            max_page_size: 2,
            ..roster::dev_target::DevTargetArgs::default()
        },
        |settings| {
            settings.quirks.paging = roster::scim::Paging::None;
            settings.quirks.supports_filter = filters;
        },
    )
    .await;
    for name in names {
        t.target
            .insert(roster::dev_target::Kind::User, crate::helpers::user(name))
            .unwrap();
    }
    t
}

/// `error` is the transient "incomplete listing" of a page of 2 where 3 were counted.
fn assert_short_of_its_total(error: &roster::scim::ScimError) {
    assert!(
        error.to_string().contains("2 resources read of the 3"),
        "{error}"
    );
    assert!(error.is_transient(), "{error}");
}
