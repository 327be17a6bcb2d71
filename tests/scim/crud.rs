use roster::dev_target::DevTargetArgs;
use roster::scim::{PatchRequest, Quirks, ScimError, id_of};
use serde_json::json;

use crate::helpers::{spawn_target, spawn_target_with, unique, user};
use crate::scenarios;

#[tokio::test]
async fn users_round_trip_through_create_read_replace_patch_delete() {
    let t = spawn_target(DevTargetArgs::default()).await;
    scenarios::users_crud(&t.client).await;
    assert_eq!(t.target.stats()["users"], 0);
}

#[tokio::test]
async fn group_members_are_added_in_chunks_and_removed_by_filter() {
    let t = spawn_target_with(DevTargetArgs::default(), |c| {
        c.quirks.max_members_per_patch = 2;
    })
    .await;
    scenarios::groups_membership(&t.client).await;
    // 3 members with at most 2 per PATCH: two add PATCHes, one remove, one rename.
    let patches = t.calls.all().iter().filter(|c| c.method == "PATCH").count();
    assert_eq!(patches, 4);
}

#[tokio::test]
async fn hostile_user_names_cannot_change_a_filter() {
    let t = spawn_target(DevTargetArgs::default()).await;
    // Bystanders a broken filter would also match.
    for i in 0..3 {
        t.client
            .users()
            .create(&user(&unique(&format!("bystander{i}"))))
            .await
            .unwrap();
    }
    scenarios::hostile_filters(&t.client).await;
}

#[tokio::test]
async fn stale_versions_get_412_and_overwrite_nothing() {
    let t = spawn_target(DevTargetArgs::default()).await;
    scenarios::etag_retry(&t.client, &t.calls).await;
    scenarios::etag_patch_retry(&t.client, &t.calls).await;
}

#[tokio::test]
async fn conflicts_and_missing_resources_are_classified() {
    let t = spawn_target(DevTargetArgs::default()).await;
    scenarios::conflicts_and_missing(&t.client).await;
}

/// A change made by reading the resource first (a target without PATCH gets it whole, by PUT)
/// is built only from a read of the resource asked for: a GET of `u1` answered with `u2` (a
/// caching proxy mixing answers up) never becomes a PUT of u2's name, emails and roles onto
/// u1, and a PATCH is never built from it either.
#[tokio::test]
async fn a_read_answered_with_another_resource_writes_nothing() {
    use poem::{Route, get, handler};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WRITES: AtomicUsize = AtomicUsize::new(0);
    #[handler]
    async fn another_user() -> poem::Response {
        crate::common::scim_answer(
            200,
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "id": "u2", "userName": "someone.else@example.com", "active": true}),
        )
    }
    #[handler]
    async fn write() -> poem::Response {
        WRITES.fetch_add(1, Ordering::SeqCst);
        crate::common::scim_answer(200, &json!({"id": "u1"}))
    }
    let app = Route::new().at("/v2/Users/u1", get(another_user).put(write).patch(write));
    let base = format!("http://{}/v2", crate::helpers::serve(app).await);
    let change = || PatchRequest::new().replace("title", json!("Chief"));
    for profile in ["no-patch", "rfc"] {
        let (c, _) = crate::helpers::client(&base, crate::helpers::bearer("t"), |c| {
            c.quirks = Quirks::profile(profile).unwrap();
        });
        let users = c.users();
        // Without PATCH every change is read first; with it, a read-modify-write is.
        let answer = if profile == "no-patch" {
            users.patch("u1", &change()).await.map(|_| ())
        } else {
            users.patch_after_read("u1", |_| change()).await.map(|_| ())
        };
        let Err(error) = answer else {
            panic!("{profile}: a write built from another resource");
        };
        assert!(
            error.to_string().contains("u2"),
            "{profile}: says what answered: {error}"
        );
    }
    assert_eq!(WRITES.load(Ordering::SeqCst), 0, "nothing written");
}

#[tokio::test]
async fn targets_without_patch_get_users_put_and_groups_refused() {
    let t = spawn_target_with(DevTargetArgs::default(), |c| {
        c.quirks = Quirks::profile("no-patch").unwrap();
    })
    .await;
    let created = t
        .client
        .users()
        .create(&user(&unique("nopatch")))
        .await
        .unwrap();
    let id = id_of(&created).unwrap();
    let _ = t.client.capabilities().await;
    t.calls.clear();
    let patched = t
        .client
        .users()
        .patch(
            id,
            &PatchRequest::new().replace_value(json!({"active": false})),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched["active"], false);
    assert_eq!(t.calls.summary(), ["GET 200", "PUT 200"]);

    let g = t
        .client
        .groups()
        .create(&json!({"schemas": [roster::scim::schemas::GROUP], "displayName": "g"}))
        .await
        .unwrap();
    let err = t
        .client
        .groups()
        .add_members(id_of(&g).unwrap(), &[id.to_owned()])
        .await
        .unwrap_err();
    assert!(matches!(err, ScimError::Unsupported(_)), "{err}");
}

#[tokio::test]
async fn entra_profile_sends_pascal_case_ops_the_server_accepts() {
    let t = spawn_target_with(DevTargetArgs::default(), |c| {
        c.quirks = Quirks::from_json(&json!("entra")).unwrap();
    })
    .await;
    let created = t
        .client
        .users()
        .create(&user(&unique("entra")))
        .await
        .unwrap();
    let id = id_of(&created).unwrap();
    t.client
        .users()
        .patch(id, &PatchRequest::new().replace("active", json!(false)))
        .await
        .unwrap();
    assert_eq!(t.client.users().get(id).await.unwrap()["active"], false);
}

#[tokio::test]
async fn test_connection_reports_capabilities() {
    let t = spawn_target(DevTargetArgs::default()).await;
    let report = t.client.test_connection().await;
    assert!(report.reachable && report.auth_ok, "{report:?}");
    assert_eq!(report.reason, None);
    let caps = report.capabilities.unwrap();
    assert!(caps.patch && caps.etag && caps.filter);
    assert_eq!(caps.filter_max_results, Some(200));
    assert_eq!(caps.resource_types, ["User", "Group"]);
    assert_eq!(caps.schemas.len(), 3);
}

#[tokio::test]
async fn concurrent_matching_look_ups_share_one_listing() {
    // Listings that prove nothing: the look-ups are one merged `or` filter (a small target
    // whose listing proves itself is read whole instead, and that listing kept).
    let t = spawn_target_with(DevTargetArgs::default(), |c| {
        c.quirks.user_listings_complete = false;
    })
    .await;
    scenarios::merged_lookups(&t.client, &t.calls).await;
}

/// A target without filtering (the `no-filter` quirks profile): look-ups page through the
/// users and compare here, with userName ignoring case, and never send `filter=`. The one test
/// of that scan.
#[tokio::test]
async fn look_ups_without_filter_support_page_and_compare_locally() {
    let t = spawn_target_with(DevTargetArgs::default(), |c| {
        c.quirks = Quirks::profile("no-filter").unwrap();
        assert!(!c.quirks.supports_filter);
        c.quirks.page_size = 2;
    })
    .await;
    let name = unique("nofilter");
    for other in 0..3 {
        t.client
            .users()
            .create(&user(&unique(&format!("other{other}"))))
            .await
            .unwrap();
    }
    let created = t.client.users().create(&user(&name)).await.unwrap();
    let found = t
        .client
        .users()
        .find_by("userName", &name.to_uppercase())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(id_of(&found[0]), id_of(&created));
    assert!(
        t.client
            .users()
            .find_by("userName", "nobody")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        t.calls.listing_statuses().is_empty(),
        "{:?}",
        t.calls.summary()
    );
}

/// A read-modify-write whose target changed between the read and the write (412) reads again
/// and re-applies the change to the new copy: both writers' changes are kept. `patch_after_read`
/// (PATCH with `If-Match`) and the PUT that stands in for PATCH on targets without it.
#[tokio::test]
async fn a_write_refused_with_412_is_built_again_from_a_new_read() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use roster::dev_target::Kind;

    for no_patch in [false, true] {
        let target = Arc::new(
            roster::dev_target::spawn(DevTargetArgs {
                token: Some(crate::helpers::TOKEN.into()),
                ..DevTargetArgs::default()
            })
            .await
            .unwrap(),
        );
        // Someone edits the account in the app right after roster's first read of it.
        let armed = Arc::new(AtomicBool::new(false));
        let (edit_target, edit_armed) = (target.clone(), armed.clone());
        let (client, calls) = crate::helpers::client(
            &target.base_url(),
            crate::helpers::bearer(crate::helpers::TOKEN),
            move |c| {
                if no_patch {
                    c.quirks = Quirks::profile("no-patch").unwrap();
                }
                let record = c.observer.take().unwrap();
                c.observer = Some(Arc::new(move |r: &roster::scim::CallRecord| {
                    record(r);
                    if r.method == "GET"
                        && r.path.contains("/Users/")
                        && edit_armed.swap(false, Ordering::SeqCst)
                    {
                        let id = r.path.rsplit('/').next().unwrap_or_default().to_owned();
                        edit_target.edit(Kind::User, &id, |u| u["title"] = json!("by hand"));
                    }
                }));
            },
        );
        let created = client.users().create(&user(&unique("rmw"))).await.unwrap();
        let id = id_of(&created).unwrap().to_owned();
        let _ = client.capabilities().await;
        calls.clear();
        armed.store(true, Ordering::SeqCst);
        let change =
            |_: &serde_json::Value| PatchRequest::new().replace("displayName", json!("by roster"));
        if no_patch {
            client
                .users()
                .patch(&id, &change(&json!(null)))
                .await
                .unwrap();
        } else {
            client.users().patch_after_read(&id, change).await.unwrap();
        }
        let write = if no_patch { "PUT" } else { "PATCH" };
        assert_eq!(
            calls.summary(),
            [
                "GET 200",
                &format!("{write} 412"),
                "GET 200",
                &format!("{write} 200")
            ],
            "no_patch {no_patch}"
        );
        let now = client.users().get(&id).await.unwrap();
        assert_eq!(now["title"], "by hand", "no_patch {no_patch}: {now}");
        assert_eq!(
            now["displayName"], "by roster",
            "no_patch {no_patch}: {now}"
        );
    }
}

/// Issue 16: the dev-target's `rfc` profile is strict RFC 7644 where a lenient server would hide
/// a client's mistakes: discovery endpoints refuse writes with 405; `attributes` and
/// `excludedAttributes` shape every read (by id, listing, `.search`), with `id`, `schemas` and
/// `meta` always returned; a search from the root spans users and groups.
#[tokio::test]
async fn the_rfc_profile_is_strict_about_discovery_projections_and_root_search() {
    let t = spawn_target(DevTargetArgs::default()).await;
    let http = reqwest::Client::new();
    let base = t.target.base_url();
    let send = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(crate::helpers::TOKEN)
            .header("content-type", "application/scim+json")
    };
    for (method, path) in [
        (reqwest::Method::POST, "/ServiceProviderConfig"),
        (reqwest::Method::PUT, "/Schemas"),
        (reqwest::Method::DELETE, "/ResourceTypes/User"),
    ] {
        let answer = send(method.clone(), path).body("{}").send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 405, "{method} {path}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["status"], "405", "{body}");
    }

    let ada = t
        .client
        .users()
        .create(
            &json!({"schemas": [roster::scim::schemas::USER], "userName": "ada",
            "name": {"givenName": "Ada", "familyName": "Lovelace"}, "title": "Countess",
            "emails": [{"type": "work", "value": "ada@example.com", "primary": true}]}),
        )
        .await
        .unwrap();
    let id = id_of(&ada).unwrap().to_owned();
    t.client
        .groups()
        .create(&json!({"schemas": [roster::scim::schemas::GROUP], "displayName": "ada-fans"}))
        .await
        .unwrap();
    let read = |path: String| {
        let request = send(reqwest::Method::GET, &path);
        async move {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status().as_u16(), 200, "{path}");
            answer.json::<serde_json::Value>().await.unwrap()
        }
    };
    let only = read(format!(
        "/Users/{id}?attributes=name.givenName,emails.value"
    ))
    .await;
    assert_eq!(only["name"], json!({"givenName": "Ada"}), "{only}");
    assert_eq!(
        only["emails"],
        json!([{"value": "ada@example.com"}]),
        "{only}"
    );
    assert!(
        only.get("title").is_none() && only.get("userName").is_none(),
        "{only}"
    );
    assert_eq!(only["id"], id.as_str(), "{only}");
    assert!(
        only.get("meta").is_some() && only.get("schemas").is_some(),
        "{only}"
    );
    let without = read(format!(
        "/Users/{id}?excludedAttributes=title,name.familyName,id"
    ))
    .await;
    assert!(without.get("title").is_none(), "{without}");
    assert_eq!(without["name"], json!({"givenName": "Ada"}), "{without}");
    assert_eq!(
        without["id"],
        id.as_str(),
        "id is always returned: {without}"
    );
    let listed = read("/Users?excludedAttributes=emails".to_owned()).await;
    assert!(listed["Resources"][0].get("emails").is_none(), "{listed}");
    assert_eq!(listed["Resources"][0]["userName"], "ada", "{listed}");

    let searched: serde_json::Value = send(reqwest::Method::POST, "/Users/.search")
        .json(
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                      "filter": "userName eq \"ada\"", "attributes": ["userName"]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(searched["totalResults"], 1, "{searched}");
    assert!(searched["Resources"][0].get("name").is_none(), "{searched}");
    let everything: serde_json::Value = send(reqwest::Method::POST, "/.search")
        .json(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        everything["totalResults"], 2,
        "a user and a group: {everything}"
    );
}

/// The discovery document is read once however many calls need it at first: the calls that
/// need it while it is read wait for that answer (every call counts against the app's rate
/// limit). A transient failure is not asked again by each waiting call in turn (behind a
/// hanging target each would wait its own timeout), but a later call asks again.
mod discovery_shared {
    use std::time::Duration;

    use poem::{Route, get, handler};
    use serde_json::json;

    use crate::helpers::{bearer, client, serve};

    #[handler]
    async fn slow_config() -> poem::Response {
        tokio::time::sleep(Duration::from_millis(200)).await;
        crate::common::scim_answer(
            200,
            &json!({"patch": {"supported": true}, "filter": {"supported": true, "maxResults": 7}}),
        )
    }

    #[handler]
    async fn slow_unavailable() -> poem::Response {
        tokio::time::sleep(Duration::from_millis(200)).await;
        crate::common::scim_answer(503, &json!({"status": "503", "detail": "busy"}))
    }

    async fn first_calls(handler: impl poem::Endpoint + 'static) -> (usize, usize) {
        let app = Route::new().at("/v2/ServiceProviderConfig", handler);
        let base = format!("http://{}/v2", serve(app).await);
        let (c, calls) = client(&base, bearer("t"), |_| {});
        let reads = || {
            calls
                .all()
                .iter()
                .filter(|r| r.path.contains("ServiceProviderConfig"))
                .count()
        };
        let answers = futures::future::join_all((0..8).map(|_| c.capabilities())).await;
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "every caller gets the same answer: {answers:?}"
        );
        let first = reads();
        c.capabilities().await;
        (first, reads())
    }

    #[tokio::test]
    async fn concurrent_first_calls_share_one_read() {
        assert_eq!(first_calls(get(slow_config)).await, (1, 1));
    }

    #[tokio::test]
    async fn a_transient_failure_is_asked_again_by_a_later_call_only() {
        assert_eq!(first_calls(get(slow_unavailable)).await, (1, 2));
    }
}
