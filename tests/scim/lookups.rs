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
    poem::Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/scim+json")
        .body(body.to_string())
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
    scim(
        200,
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
               "patch": {"supported": true}, "filter": {"supported": true, "maxResults": 100},
               "bulk": {"supported": false}, "etag": {"supported": false},
               "sort": {"supported": false}, "changePassword": {"supported": false}}),
    )
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
    let found =
        futures::future::join_all(asked.iter().map(|n| batcher.find(&c, "userName", n))).await;
    for result in found {
        let error = result.expect_err("the target is unavailable");
        assert_eq!(error.status(), Some(503));
        assert!(error.retry_after().is_some(), "{error}");
    }
    assert_eq!(
        calls.listing_statuses(),
        [Some(503)],
        "one call, its answer shared"
    );
}

#[tokio::test]
async fn a_target_refusing_or_filters_is_asked_one_value_at_a_time() {
    let base = target(get(users)).await;
    let (c, calls) = client(&base, bearer("t"), |_| {});
    let batcher = Arc::new(LookupBatcher::default());
    let asked = ["KNOWN", "a", "b"];
    let lookups =
        || futures::future::join_all(asked.iter().map(|n| batcher.find(&c, "userName", n)));

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
