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
/// `POST /Users/.search` instead, with pages that repeat an account and hold others; its
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
    // Page 2 repeats page 1's Ada; Bob and Carl answer a filter the target did not apply.
    let page = if request.start_index == 1 {
        json!([{"id": "a1", "userName": "ada"}, {"id": "b1", "userName": "bob"}])
    } else {
        json!([{"id": "c1", "userName": "carl"}, {"ID": "a1", "UserName": "Ada"}])
    };
    scim(
        200,
        json!({"schemas": [roster::scim::schemas::LIST_RESPONSE], "totalResults": 4,
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
async fn a_sensitive_target_is_searched_by_post_and_answers_are_checked_and_counted_once() {
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
