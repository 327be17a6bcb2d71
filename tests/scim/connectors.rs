//! Each emulated vendor rule (`dev-target --profile NAME`) bites: a client with plain RFC
//! settings fails against the profile, and the same client with the catalogue connector's
//! quirks (read from its file, `roster::connectors`) succeeds.
use roster::dev_target::{DevTargetArgs, Profile};
use roster::scim::{ListQuery, PatchRequest, Quirks, ScimClient, TargetConfig};
use serde_json::{Value, json};

use crate::helpers::{TOKEN, bearer, client, group, spawn_target, user};

fn connector_quirks(name: &str) -> Quirks {
    let connector = roster::connectors::find(name).expect("in the catalogue");
    Quirks::from_json(&connector.defaults.quirks).expect("the connector's quirks parse")
}

/// A profile's dev-target, a client with RFC settings and one with the connector's quirks.
async fn rfc_and_connector(
    profile: Profile,
    connector: &str,
) -> (crate::helpers::TestTarget, ScimClient, ScimClient) {
    let target = spawn_target(DevTargetArgs {
        profile,
        ..DevTargetArgs::default()
    })
    .await;
    let base = target.target.base_url();
    let (rfc, _) = client(&base, bearer(TOKEN), |_| {});
    let quirks = connector_quirks(connector);
    let (vendor, _) = client(&base, bearer(TOKEN), |c: &mut TargetConfig| {
        c.quirks = quirks;
    });
    (target, rfc, vendor)
}

fn status(err: &roster::scim::ScimError) -> Option<u16> {
    err.status()
}

#[tokio::test]
async fn salesforce_discovery_is_plural() {
    let (_target, rfc, vendor) = rfc_and_connector(Profile::Salesforce, "salesforce").await;
    let err = rfc
        .discover()
        .await
        .expect_err("the singular path is not served");
    assert_eq!(status(&err), Some(404), "{err}");
    let report = rfc.test_connection().await;
    assert!(
        report
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("/ServiceProviderConfig answered 404")),
        "{:?}",
        report.reason
    );
    let capabilities = vendor.discover().await.expect("plural discovery");
    assert!(capabilities.patch);
    let report = vendor.test_connection().await;
    assert!(report.reachable && report.auth_ok, "{:?}", report.reason);
}

#[tokio::test]
async fn github_emu_refuses_value_filter_paths_and_the_connector_removes_members_without_them() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::GithubEmu, "github-emu").await;
    let mut ids = Vec::new();
    for name in ["gh-a", "gh-b", "gh-c"] {
        let created = target
            .client
            .users()
            .create(&user(name))
            .await
            .expect("user");
        ids.push(roster::scim::id_of(&created).expect("id").to_owned());
    }
    let mut body = group("gh-team");
    body["members"] = json!(
        ids.iter()
            .map(|id| json!({"value": id}))
            .collect::<Vec<_>>()
    );
    let created = target.client.groups().create(&body).await.expect("group");
    let gid = roster::scim::id_of(&created).expect("id").to_owned();

    let err = rfc
        .groups()
        .remove_members(&gid, &ids[..1])
        .await
        .expect_err("a filtered remove path is refused");
    assert_eq!(status(&err), Some(400), "{err}");

    vendor
        .groups()
        .remove_members(&gid, &ids[..1])
        .await
        .expect("remove by value list");
    let members: Vec<String> = target.client.groups().get(&gid).await.expect("group")["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["value"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(members.len(), 2, "only the one member removed: {members:?}");
    assert!(!members.contains(&ids[0]));
}

#[tokio::test]
async fn github_emu_takes_one_filter_term_so_the_connector_never_merges_lookups() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::GithubEmu, "github-emu").await;
    create_users(&target, &["one", "two"]).await;
    let err = rfc
        .users()
        .find_by_any("userName", &["one", "two"])
        .await
        .expect_err("an `or` filter is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    let merged = vendor
        .users()
        .find_by_any("userName", &["one", "two"])
        .await
        .expect("no call made");
    assert!(merged.is_none(), "the caller looks each value up alone");
    for name in ["one", "two"] {
        let found = vendor
            .users()
            .find_by("userName", name)
            .await
            .expect("look-up");
        assert_eq!(found.len(), 1, "{name}");
    }
}

#[tokio::test]
async fn github_emu_requires_a_user_agent_which_roster_always_sends() {
    let target = spawn_target(DevTargetArgs {
        profile: Profile::GithubEmu,
        ..DevTargetArgs::default()
    })
    .await;
    let url = format!("{}/Users", target.target.base_url());
    let bare = reqwest::Client::builder().build().expect("client");
    let refused = bare
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 400, "no User-Agent");
    let listed = target.client.users().find_by("userName", "nobody").await;
    assert!(listed.is_ok(), "{listed:?}");
}

#[tokio::test]
async fn zoom_patches_only_active_and_the_connector_puts_other_changes() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::Zoom, "zoom").await;
    let created = target
        .client
        .users()
        .create(&user("zed"))
        .await
        .expect("user");
    let id = roster::scim::id_of(&created).expect("id").to_owned();
    let retitle = PatchRequest::new().replace("title", json!("Chair"));
    let err = rfc
        .users()
        .patch(&id, &retitle)
        .await
        .expect_err("PATCH of title is refused");
    assert_eq!(status(&err), Some(400), "{err}");

    vendor
        .users()
        .patch(&id, &retitle)
        .await
        .expect("sent as PUT");
    let read = target.client.users().get(&id).await.expect("user");
    assert_eq!(read["title"], "Chair");
    let deactivate = PatchRequest::new().replace("active", json!(false));
    vendor
        .users()
        .patch(&id, &deactivate)
        .await
        .expect("PATCH of active");
    let read = target.client.users().get(&id).await.expect("user");
    assert_eq!(read["active"], Value::Bool(false));
}

#[tokio::test]
async fn snowflake_answers_unsupported_filters_empty_so_the_connector_asks_one_value_at_a_time() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::Snowflake, "snowflake").await;
    create_users(&target, &["snow-a", "snow-b"]).await;
    // With RFC settings both accounts read as absent: roster would create them again.
    let merged = rfc
        .users()
        .find_by_any("userName", &["snow-a", "snow-b"])
        .await
        .expect("answered 200");
    assert_eq!(merged, Some(Vec::new()), "the emulation answers empty");
    let merged = vendor
        .users()
        .find_by_any("userName", &["snow-a", "snow-b"])
        .await
        .expect("no call made");
    assert!(merged.is_none(), "never merged on this target");
    for name in ["snow-a", "snow-b"] {
        let found = vendor
            .users()
            .find_by("userName", name)
            .await
            .expect("look-up");
        assert_eq!(found.len(), 1, "{name}");
    }
}

/// A user AWS IAM Identity Center accepts: it requires givenName, familyName, userName and
/// displayName on create.
fn aws_user(name: &str) -> Value {
    let mut body = user(name);
    body["displayName"] = json!(format!("{name} Lovelace"));
    body
}

#[tokio::test]
async fn aws_identity_center_refuses_start_index_so_the_connector_pages_with_cursors() {
    use futures::TryStreamExt as _;
    let target = spawn_target(DevTargetArgs {
        profile: Profile::AwsIdentityCenter,
        ..DevTargetArgs::default()
    })
    .await;
    let base = target.target.base_url();
    let (rfc, _) = client(&base, bearer(TOKEN), |_| {});
    let quirks = connector_quirks("aws-identity-center");
    let (vendor, calls) = client(&base, bearer(TOKEN), |c: &mut TargetConfig| {
        c.quirks = quirks;
    });
    for n in 0..230 {
        vendor
            .users()
            .create(&aws_user(&format!("aws-{n:03}")))
            .await
            .expect("create");
    }
    let err = rfc
        .users()
        .list(100)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("startIndex is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    assert!(err.to_string().contains("startIndex"), "{err}");
    let report = rfc.test_connection().await;
    assert!(!report.auth_ok, "the RFC probe is refused: {report:?}");

    let before = calls.all().len();
    let listed: Vec<Value> = vendor
        .users()
        .list(100)
        .try_collect()
        .await
        .expect("cursor paging");
    let ids: std::collections::BTreeSet<&str> =
        listed.iter().filter_map(roster::scim::id_of).collect();
    assert_eq!(ids.len(), 230, "every account once");
    let pages: Vec<String> = calls.all()[before..]
        .iter()
        .map(|c| c.path.clone())
        .filter(|p| p.contains("/Users"))
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[0].ends_with("cursor=&count=100"), "{pages:?}");
    assert!(pages.iter().all(|p| !p.contains("startIndex")), "{pages:?}");
    let report = vendor.test_connection().await;
    assert!(report.auth_ok, "{:?}", report.reason);
}

/// Issue 17: AWS pages with cursors and sends no `totalResults`; a cursor walk read to its end
/// (no `nextCursor`, no cursor twice, every id once) proves the listing whole, so a batch of
/// look-ups costs one listing call, then the creates; the account that exists is found by the
/// listing (and adopted), never created a second time.
#[tokio::test]
async fn aws_identity_center_look_ups_are_answered_by_one_cursor_listing() {
    use roster::delivery::lookups::LookupBatcher;
    use std::sync::Arc;
    let (target, _rfc, vendor) =
        rfc_and_connector(Profile::AwsIdentityCenter, "aws-identity-center").await;
    let base = target.target.base_url();
    let (vendor_counted, calls) = client(&base, bearer(TOKEN), |c: &mut TargetConfig| {
        c.quirks = connector_quirks("aws-identity-center");
    });
    let existing = vendor
        .users()
        .create(&aws_user("aws-existing@example.com"))
        .await
        .expect("made by hand");
    let joiners: Vec<String> = (0..5)
        .map(|n| format!("aws-joiner-{n}@example.com"))
        .chain(["AWS-Existing@example.com".to_owned()])
        .collect();
    let batcher = Arc::new(LookupBatcher::new(2));
    let found = crate::helpers::find_all(&batcher, &vendor_counted, &joiners).await;
    // Calls to the users (the client reads the target's configuration once, first).
    let user_calls = || -> Vec<(String, String)> {
        calls
            .all()
            .into_iter()
            .filter(|c| c.path.contains("/Users"))
            .map(|c| (c.method, c.path))
            .collect()
    };
    let listed: Vec<String> = user_calls().into_iter().map(|(_, path)| path).collect();
    assert_eq!(listed.len(), 1, "one call for six look-ups: {listed:?}");
    assert!(
        listed[0].contains("cursor=") && !listed[0].contains("filter="),
        "{listed:?}"
    );
    let existing_id = roster::scim::id_of(&existing).expect("id");
    let adopted = found[5].as_ref().expect("answered");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(roster::scim::id_of(&adopted[0]), Some(existing_id));
    for (name, found) in joiners.iter().zip(&found).take(5) {
        assert!(found.as_ref().expect("answered").is_empty(), "{name}");
        batcher.creating("userName", name);
        vendor_counted
            .users()
            .create(&aws_user(name))
            .await
            .expect("created");
    }
    let methods: Vec<String> = user_calls().into_iter().map(|(method, _)| method).collect();
    assert_eq!(methods, ["GET", "POST", "POST", "POST", "POST", "POST"]);
    assert_eq!(target.target.users_snapshot().len(), 6, "one account each");

    // The listing is kept a while: a later look-up costs no call, and finds what it held.
    let later = batcher
        .find(&vendor_counted, "userName", "aws-existing@EXAMPLE.com")
        .await
        .expect("answered");
    assert_eq!(later.len(), 1);
    assert_eq!(roster::scim::id_of(&later[0]), Some(existing_id));
    let absent = batcher
        .find(&vendor_counted, "userName", "aws-later@example.com")
        .await
        .expect("answered");
    assert!(absent.is_empty());
    assert_eq!(user_calls().len(), 6, "no call: {:?}", user_calls());
    // A value whose create started after the listing was asked is asked of the target (by a
    // new listing: the target is known to fit one page, so that costs what a filter would).
    let created = batcher
        .find(&vendor_counted, "userName", &joiners[0])
        .await
        .expect("answered");
    assert_eq!(created.len(), 1, "the account created since");
    let asked = user_calls();
    assert_eq!(asked.len(), 7, "{asked:?}");
    assert_eq!(asked[6].0, "GET", "{asked:?}");
}

#[tokio::test]
async fn aws_identity_center_answers_groups_without_members_so_the_connector_asks_per_member() {
    let (target, rfc, vendor) =
        rfc_and_connector(Profile::AwsIdentityCenter, "aws-identity-center").await;
    let mut ids = Vec::new();
    for name in ["aws-a", "aws-b", "aws-c"] {
        let created = vendor.users().create(&aws_user(name)).await.expect("user");
        ids.push(roster::scim::id_of(&created).expect("id").to_owned());
    }
    let mut body = group("aws-team");
    body["members"] = json!([{"value": ids[0]}, {"value": ids[1]}]);
    let created = vendor.groups().create(&body).await.expect("group");
    let gid = roster::scim::id_of(&created).expect("id").to_owned();
    // Read back, the group has no members: RFC settings would take that as "nobody".
    let read = rfc.groups().get(&gid).await.expect("group");
    assert_eq!(read["members"], json!([]), "{read}");
    let stored = target
        .target
        .groups_snapshot()
        .into_iter()
        .find(|g| g["id"] == json!(gid))
        .expect("stored");
    assert_eq!(stored["members"].as_array().map(Vec::len), Some(2));
    let confirmed = vendor
        .groups()
        .members_confirmed(&gid, &ids)
        .await
        .expect("member filter");
    assert_eq!(confirmed, Some(ids[..2].to_vec()));
    // A filter AWS does not document (`or`) is refused.
    let err = rfc
        .groups()
        .find_by_any("displayName", &["aws-team", "other"])
        .await
        .expect_err("`or` is refused");
    assert_eq!(status(&err), Some(400), "{err}");
}

#[tokio::test]
async fn atlassian_takes_one_eq_filter_so_the_connector_looks_up_one_listed_attribute_at_a_time() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::Atlassian, "atlassian").await;
    create_users(&target, &["atl-a", "atl-b"]).await;
    // RFC settings merge look-ups into an `or` and filter on any attribute: both refused.
    let err = rfc
        .users()
        .find_by_any("userName", &["atl-a", "atl-b"])
        .await
        .expect_err("an `or` filter is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    assert!(err.to_string().contains("single eq"), "{err}");
    let err = rfc
        .users()
        .find_by("emails.value", "atl-a@example.com")
        .await
        .expect_err("a filter on emails is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    let err = rfc
        .groups()
        .find_by("externalId", "g-1")
        .await
        .expect_err("groups filter on displayName only");
    assert_eq!(status(&err), Some(400), "{err}");

    let merged = vendor
        .users()
        .find_by_any("userName", &["atl-a", "atl-b"])
        .await
        .expect("no call made");
    assert!(merged.is_none(), "the caller looks each value up alone");
    for name in ["atl-a", "atl-b"] {
        let found = vendor
            .users()
            .find_by("userName", name)
            .await
            .expect("look-up");
        assert_eq!(found.len(), 1, "{name}");
    }
    let by_email = vendor
        .users()
        .find_by("emails.value", "atl-b@example.com")
        .await
        .expect("paged and compared locally");
    assert_eq!(by_email.len(), 1);
}

#[tokio::test]
async fn atlassian_pages_hold_at_most_100_whatever_count_asks() {
    let (target, _rfc, vendor) = rfc_and_connector(Profile::Atlassian, "atlassian").await;
    for n in 0..120 {
        target
            .target
            .insert(
                roster::dev_target::Kind::User,
                user(&format!("atl-page-{n}")),
            )
            .expect("seeded");
    }
    let url = format!("{}/Users?count=500", target.target.base_url());
    let page: Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(page["itemsPerPage"], 100, "{}", page["totalResults"]);
    assert_eq!(page["totalResults"], 120);
    let listed: Vec<Value> = futures::TryStreamExt::try_collect(vendor.users().list(100))
        .await
        .expect("startIndex paging");
    assert_eq!(listed.len(), 120);
}

#[tokio::test]
async fn atlassian_refuses_group_renames_so_the_connector_replaces_the_group() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::Atlassian, "atlassian").await;
    let mut ids = Vec::new();
    for name in ["atl-r1", "atl-r2", "atl-r3"] {
        let created = vendor.users().create(&user(name)).await.expect("user");
        ids.push(roster::scim::id_of(&created).expect("id").to_owned());
    }
    let created = vendor
        .groups()
        .create(&group("atl-old"))
        .await
        .expect("group");
    let old = roster::scim::id_of(&created).expect("id").to_owned();
    vendor
        .groups()
        .add_members(&old, &ids)
        .await
        .expect("members change");
    // RFC settings rename with a PATCH (or a PUT): refused.
    let err = rfc
        .groups()
        .patch(
            &old,
            &PatchRequest::new().replace("displayName", json!("atl-new")),
        )
        .await
        .expect_err("a rename is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    assert!(err.to_string().contains("renaming a group"), "{err}");
    let mut renamed = group("atl-new");
    renamed["id"] = json!(old);
    let err = rfc
        .groups()
        .replace(&old, &renamed)
        .await
        .expect_err("a PUT with another name is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    assert!(Quirks::default().group_rename);

    // The connector says so, and create–move–delete goes through.
    assert!(!vendor.quirks().group_rename);
    let created = vendor
        .groups()
        .create(&group("atl-new"))
        .await
        .expect("group");
    let new = roster::scim::id_of(&created).expect("id").to_owned();
    vendor
        .groups()
        .add_members(&new, &ids)
        .await
        .expect("moved");
    vendor.groups().delete(&old).await.expect("old deleted");
    let groups = target.target.groups_snapshot();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["displayName"], "atl-new");
    assert_eq!(groups[0]["members"].as_array().map(Vec::len), Some(3));
}

/// Creates a user named each of `names` in the target, through the target's own client.
async fn create_users(target: &crate::helpers::TestTarget, names: &[&str]) {
    for name in names {
        target
            .client
            .users()
            .create(&user(name))
            .await
            .expect("user");
    }
}

/// The ids of `n` users put straight into the dev-target's store (no request made, none
/// counted or rate limited).
fn seeded_users(target: &crate::helpers::TestTarget, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let created = target
                .target
                .insert(
                    roster::dev_target::Kind::User,
                    user(&format!("{prefix}-{i:05}")),
                )
                .expect("seeded");
            roster::scim::id_of(&created).expect("id").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn slack_serves_at_most_1000_per_page_and_10_without_count_so_the_connector_asks_for_1000() {
    use futures::TryStreamExt as _;
    let target = spawn_target(DevTargetArgs {
        profile: Profile::Slack,
        ..DevTargetArgs::default()
    })
    .await;
    seeded_users(&target, "slack", 1500);
    let base = target.target.base_url();
    let page = |query: &'static str| {
        let url = format!("{base}/Users{query}");
        async move {
            let answer: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("answer")
                .json()
                .await
                .expect("json");
            (
                answer["itemsPerPage"].as_u64(),
                answer["totalResults"].as_u64(),
            )
        }
    };
    assert_eq!(page("?count=5000").await, (Some(1000), Some(1500)));
    assert_eq!(page("").await, (Some(10), Some(1500)), "10 without count");

    // Every account, in as many pages as each setting asks.
    let listing = |quirks: Quirks| {
        let (client, calls) = client(&base, bearer(TOKEN), |c: &mut TargetConfig| {
            c.quirks = quirks;
        });
        async move {
            let size = client.quirks().page_size;
            let listed: Vec<Value> = client.users().list(size).try_collect().await.expect("list");
            let pages = calls
                .all()
                .iter()
                .filter(|c| c.path.contains("/Users?"))
                .count();
            (listed.len(), pages)
        }
    };
    assert_eq!(listing(Quirks::default()).await, (1500, 15));
    assert_eq!(listing(connector_quirks("slack")).await, (1500, 2));
}

#[tokio::test]
async fn slack_creates_only_with_an_email_and_its_delete_deactivates_a_user_but_removes_a_group() {
    let (target, rfc, _) = rfc_and_connector(Profile::Slack, "slack").await;
    let mut bare = user("no-mail");
    bare.as_object_mut().map(|u| u.remove("emails"));
    let err = rfc
        .users()
        .create(&bare)
        .await
        .expect_err("an email is required");
    assert_eq!(status(&err), Some(400), "{err}");
    assert!(target.target.users_snapshot().is_empty());

    let created = rfc.users().create(&user("mailed")).await.expect("user");
    let id = roster::scim::id_of(&created).expect("id").to_owned();
    rfc.users().delete(&id).await.expect("DELETE answered");
    let read = rfc.users().get(&id).await.expect("still there");
    assert_eq!(read["active"], Value::Bool(false), "{read}");
    assert_eq!(read["userName"], "mailed");

    let group = rfc
        .groups()
        .create(&group("slack-team"))
        .await
        .expect("group");
    let gid = roster::scim::id_of(&group).expect("id").to_owned();
    rfc.groups().delete(&gid).await.expect("DELETE answered");
    let err = rfc.groups().get(&gid).await.expect_err("the group is gone");
    assert_eq!(status(&err), Some(404), "{err}");
}

/// `n` groups of `size` seeded members each, made by `maker`; returns their ids and members.
async fn miro_groups(
    target: &crate::helpers::TestTarget,
    prefix: &str,
    n: usize,
    size: usize,
) -> Vec<(String, Vec<String>)> {
    let mut groups = Vec::new();
    for g in 0..n {
        let members = seeded_users(target, &format!("{prefix}-{g}"), size);
        let created = target
            .target
            .insert(
                roster::dev_target::Kind::Group,
                group(&format!("{prefix}-{g}")),
            )
            .expect("group");
        let id = roster::scim::id_of(&created).expect("id").to_owned();
        groups.push((id, members));
    }
    groups
}

#[tokio::test]
async fn miro_limits_large_group_patches_so_the_connector_keeps_them_small() {
    let (target, rfc, vendor) = rfc_and_connector(Profile::Miro, "miro").await;
    // Miro: 5 group PATCHes per 30 s above 500 bytes. RFC settings add 10 members in one PATCH.
    let mut refused = None;
    for (n, (gid, members)) in miro_groups(&target, "rfc", 6, 10).await.iter().enumerate() {
        if let Err(err) = rfc.groups().add_members(gid, members).await {
            refused = Some((n, err));
            break;
        }
    }
    let (n, err) = refused.expect("a large PATCH is throttled");
    assert_eq!(n, 5, "the sixth: {err}");
    assert_eq!(status(&err), Some(429), "{err}");
    assert!(err.retry_after().is_some(), "{err}");

    // The connector's chunks stay at most 500 bytes: 100 per 30 s.
    for (gid, members) in miro_groups(&target, "miro", 6, 10).await {
        vendor
            .groups()
            .add_members(&gid, &members)
            .await
            .expect("small PATCHes are not throttled");
        vendor
            .groups()
            .remove_members(&gid, &members[..5])
            .await
            .expect("small PATCHes are not throttled");
        let read = target.client.groups().get(&gid).await.expect("group");
        assert_eq!(read["members"].as_array().map(Vec::len), Some(5));
    }
}

#[tokio::test]
async fn miro_refuses_a_group_patch_beyond_8000_members_or_800000_bytes_with_413() {
    let target = spawn_target(DevTargetArgs {
        profile: Profile::Miro,
        ..DevTargetArgs::default()
    })
    .await;
    let base = target.target.base_url();
    let (gid, members) = miro_groups(&target, "big", 1, 8001).await.remove(0);
    let push = |max_members_per_patch: u32| {
        let (client, _) = client(&base, bearer(TOKEN), |c: &mut TargetConfig| {
            c.quirks.max_members_per_patch = max_members_per_patch;
        });
        let (gid, members) = (gid.clone(), members.clone());
        async move { client.groups().add_members(&gid, &members).await }
    };
    // One more than the connector's hard limit (`limits`: 8000) is refused before anything
    // is applied (the limit itself is served: the profile's unit test).
    let err = push(8001).await.expect_err("too many members");
    assert_eq!(status(&err), Some(413), "{err}");
    assert!(err.to_string().contains("8000"), "{err}");
    let read = target.client.groups().get(&gid).await.expect("group");
    assert_eq!(read["members"], json!([]), "nothing applied");

    // Under 8000 changes, a body over 800 000 bytes is refused too.
    let long_ids: Vec<Value> = (0..7000)
        .map(|n| json!({"value": format!("{n:0>120}")}))
        .collect();
    let body = json!({"schemas": [roster::scim::schemas::PATCH_OP],
        "Operations": [{"op": "add", "path": "members", "value": long_ids}]});
    let answer = reqwest::Client::new()
        .patch(format!("{base}/Groups/{gid}"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/scim+json")
        .body(body.to_string())
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 413);
    let detail = answer.text().await.unwrap_or_default();
    assert!(detail.contains("bytes"), "{detail}");
}

/// A user Figma accepts: its userName is an email.
fn figma_user(email: &str) -> Value {
    let mut body = user(email);
    body["displayName"] = json!("Ada Lovelace");
    body
}

#[tokio::test]
async fn figma_takes_only_an_email_of_at_most_100_characters_as_user_name() {
    let (target, _rfc, vendor) = rfc_and_connector(Profile::Figma, "figma").await;
    let err = vendor
        .users()
        .create(&figma_user("ada"))
        .await
        .expect_err("not an email");
    assert_eq!(status(&err), Some(400), "{err}");
    assert!(err.to_string().contains("email"), "{err}");
    let long = format!("{}@example.com", "a".repeat(89));
    let err = vendor
        .users()
        .create(&figma_user(&long))
        .await
        .expect_err("101 characters");
    assert!(err.to_string().contains("100 characters"), "{err}");
    let created = vendor
        .users()
        .create(&figma_user("ada@example.com"))
        .await
        .expect("an email");
    let id = roster::scim::id_of(&created).expect("id").to_owned();
    let err = vendor
        .users()
        .patch(
            &id,
            &PatchRequest::new().replace("displayName", json!("d".repeat(101))),
        )
        .await
        .expect_err("displayName over 100");
    assert!(err.to_string().contains("displayName"), "{err}");
    let err = vendor
        .groups()
        .create(&group(&"g".repeat(256)))
        .await
        .expect_err("a group name over 255");
    assert_eq!(status(&err), Some(400), "{err}");
    assert_eq!(target.target.users_snapshot().len(), 1);
    // The same requests are RFC 7644 to the rfc profile.
    let plain = spawn_target(DevTargetArgs::default()).await;
    plain
        .client
        .users()
        .create(&figma_user("ada"))
        .await
        .expect("any userName");
}

#[tokio::test]
async fn figma_deactivation_removes_the_user_from_its_groups_and_keeps_the_account() {
    for profile in [Profile::Figma, Profile::Rfc] {
        let target = spawn_target(DevTargetArgs {
            profile,
            ..DevTargetArgs::default()
        })
        .await;
        let users = target.client.users();
        let mut ids = Vec::new();
        for email in ["leaves@example.com", "stays@example.com"] {
            let created = users.create(&figma_user(email)).await.expect("user");
            ids.push(roster::scim::id_of(&created).expect("id").to_owned());
        }
        let mut body = group("designers");
        body["members"] = json!([{"value": ids[0]}, {"value": ids[1]}]);
        let created = target.client.groups().create(&body).await.expect("group");
        let gid = roster::scim::id_of(&created).expect("id").to_owned();
        users
            .patch(
                &ids[0],
                &PatchRequest::new().replace("active", json!(false)),
            )
            .await
            .expect("deactivated");
        let read = users.get(&ids[0]).await.expect("still readable");
        assert_eq!(read["active"], json!(false), "{profile:?}");
        let listed = users
            .find_by("userName", "leaves@example.com")
            .await
            .expect("listed");
        assert_eq!(listed.len(), 1, "{profile:?}: still listed");
        let members: Vec<String> =
            target.client.groups().get(&gid).await.expect("group")["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["value"].as_str().map(str::to_owned))
                .collect();
        let expected = if profile == Profile::Figma {
            vec![ids[1].clone()]
        } else {
            ids.clone()
        };
        assert_eq!(members, expected, "{profile:?}");
    }
}

/// An Asana dev-target whose accounts at `guests.example.com` are guests.
async fn asana_target() -> crate::helpers::TestTarget {
    spawn_target(DevTargetArgs {
        profile: Profile::Asana,
        guest_domains: vec!["guests.example.com".into()],
        ..DevTargetArgs::default()
    })
    .await
}

/// An Asana emulation holding a member (`m@example.com`) and a guest (`g@guests.example.com`).
async fn asana_with_member_and_guest() -> (crate::helpers::TestTarget, Value, Value) {
    let target = asana_target().await;
    let users = target.client.users();
    let member = users.create(&user("m@example.com")).await.expect("member");
    let guest = users
        .create(&user("g@guests.example.com"))
        .await
        .expect("guest");
    (target, member, guest)
}

fn asana_client(target: &crate::helpers::TestTarget, quirks: Quirks) -> ScimClient {
    client(
        &target.target.base_url(),
        bearer(TOKEN),
        |c: &mut TargetConfig| {
            c.quirks = quirks;
        },
    )
    .0
}

/// Issue 17: Asana's listing leaves out only its guests, users whose address is not at one of
/// the organisation's domains. With `user_listings_complete_for_domains` set to the app's
/// domain, look-ups of addresses there are answered by one listing (kept a while); a guest's
/// address is still looked up by filter, and without the setting every look-up is.
#[tokio::test]
async fn asana_listings_prove_absent_addresses_at_the_organisation_s_domains() {
    use roster::delivery::lookups::LookupBatcher;
    use std::sync::Arc;
    let (target, member, guest) = asana_with_member_and_guest().await;
    let asked = ["new-1@example.com", "new-2@example.com", "M@example.com"];
    let base = target.target.base_url();
    let member_id = roster::scim::id_of(&member).expect("id").to_owned();
    let look_up = |quirks: Quirks| {
        let (base, member_id) = (base.clone(), member_id.clone());
        async move {
            let (vendor, calls) = client(&base, bearer(TOKEN), |c: &mut TargetConfig| {
                c.quirks = quirks
            });
            let batcher = Arc::new(LookupBatcher::new(2));
            let found = crate::helpers::find_all(&batcher, &vendor, &asked).await;
            assert!(found[0].as_ref().expect("answered").is_empty());
            assert!(found[1].as_ref().expect("answered").is_empty());
            let m = found[2].as_ref().expect("answered");
            assert_eq!(m.len(), 1);
            assert_eq!(roster::scim::id_of(&m[0]), Some(member_id.as_str()));
            (vendor, calls, batcher)
        }
    };
    let users_calls = |calls: &crate::helpers::Calls| -> Vec<String> {
        calls
            .all()
            .into_iter()
            .filter(|c| c.path.contains("/Users"))
            .map(|c| c.path)
            .collect()
    };

    let (_, calls, _) = look_up(connector_quirks("asana")).await;
    let paths = users_calls(&calls);
    assert_eq!(paths.len(), 3, "one filter each: {paths:?}");
    assert!(paths.iter().all(|p| p.contains("filter=")), "{paths:?}");

    let mut quirks = connector_quirks("asana");
    quirks.user_listings_complete_for_domains = vec!["example.com".into()];
    let (vendor, calls, batcher) = look_up(quirks).await;
    let paths = users_calls(&calls);
    assert_eq!(paths.len(), 1, "one listing: {paths:?}");
    assert!(!paths[0].contains("filter="), "{paths:?}");
    // Kept: another address at the domain costs no call.
    let later = batcher
        .find(&vendor, "userName", "new-3@example.com")
        .await
        .expect("answered");
    assert!(later.is_empty());
    assert_eq!(users_calls(&calls).len(), 1);
    // The guest's address is not at the domain: the listing says nothing of it, and the
    // target is asked (Asana leaves guests out of filtered listings too: nothing found, as
    // a look-up of its own finds; the guest is read by its id).
    let found = batcher
        .find(&vendor, "userName", "g@guests.example.com")
        .await
        .expect("answered");
    assert!(found.is_empty());
    let read = vendor
        .users()
        .get(roster::scim::id_of(&guest).expect("id"))
        .await
        .expect("read by id");
    assert_eq!(read["userName"], "g@guests.example.com");
    let paths: Vec<String> = users_calls(&calls)
        .into_iter()
        .filter(|p| !p.contains("/Users/"))
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[1].contains("filter="), "{paths:?}");
}

#[tokio::test]
async fn asana_lists_users_with_only_a_user_name_filter_so_the_connector_lists_in_one_request() {
    use futures::TryStreamExt as _;
    let target = asana_target().await;
    let rfc = asana_client(&target, Quirks::default());
    let vendor = asana_client(&target, connector_quirks("asana"));
    for (n, name) in ["m1@example.com", "m2@example.com"].iter().enumerate() {
        let mut body = user(name);
        body["externalId"] = json!(format!("E{n}"));
        target.client.users().create(&body).await.expect("user");
    }
    let err = rfc
        .users()
        .list(100)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("startIndex is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    let err = rfc
        .users()
        .find_by("externalId", "E1")
        .await
        .expect_err("a filter on externalId is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    let err = rfc
        .users()
        .find_by_any("userName", &["m1@example.com", "m2@example.com"])
        .await
        .expect_err("an `or` filter is refused");
    assert_eq!(status(&err), Some(400), "{err}");
    let report = rfc.test_connection().await;
    assert!(!report.auth_ok, "the RFC probe is refused: {report:?}");

    let listed: Vec<Value> = vendor
        .users()
        .list(100)
        .try_collect()
        .await
        .expect("one request");
    assert_eq!(listed.len(), 2);
    let found = vendor
        .users()
        .find_by("externalId", "E1")
        .await
        .expect("compared locally");
    assert_eq!(found.len(), 1);
    let found = vendor
        .users()
        .find_by("userName", "m2@example.com")
        .await
        .expect("the one filter Asana takes");
    assert_eq!(found.len(), 1);
    let report = vendor.test_connection().await;
    assert!(report.auth_ok, "{:?}", report.reason);
}

#[tokio::test]
async fn asana_leaves_guests_out_of_listings_so_the_connector_proves_no_absence() {
    use futures::TryStreamExt as _;
    let (target, member, guest) = asana_with_member_and_guest().await;
    let guest_id = roster::scim::id_of(&guest).expect("id").to_owned();
    let whole = || ListQuery {
        filter: None,
        attributes: Vec::new(),
        page_size: 100,
        overlapping: false,
    };
    // Listed in one request as RFC 7644 answers it, the listing claims to be complete
    // (`totalResults` 1) and the guest reads as absent.
    let one_request = Quirks {
        paging: roster::scim::Paging::None,
        ..Quirks::default()
    };
    let pages: Vec<roster::scim::Page> = asana_client(&target, one_request)
        .users()
        .list_pages(whole())
        .try_collect()
        .await
        .expect("listed");
    assert_eq!(pages.len(), 1);
    assert_eq!(
        roster::scim::id_of(&pages[0].resources[0]),
        roster::scim::id_of(&member)
    );
    assert_eq!(pages[0].resources.len(), 1, "the guest is not listed");
    assert!(
        !pages[0].unproven,
        "read as complete: the guest would be missing"
    );

    let vendor = asana_client(&target, connector_quirks("asana"));
    let pages: Vec<roster::scim::Page> = vendor
        .users()
        .list_pages(whole())
        .try_collect()
        .await
        .expect("listed");
    assert_eq!(pages[0].resources.len(), 1);
    assert!(pages[0].unproven, "the connector proves no absence");
    assert!(
        vendor
            .users()
            .find_by("userName", "g@guests.example.com")
            .await
            .expect("answered")
            .is_empty(),
        "not found by filter either"
    );
    let read = vendor.users().get(&guest_id).await.expect("read by id");
    assert_eq!(read["userName"], "g@guests.example.com");
}

#[tokio::test]
async fn asana_delete_deprovisions_and_the_account_stays_inactive() {
    let target = asana_target().await;
    let created = target
        .client
        .users()
        .create(&user("z@example.com"))
        .await
        .expect("user");
    let id = roster::scim::id_of(&created).expect("id").to_owned();
    target.client.users().delete(&id).await.expect("deleted");
    let read = target
        .client
        .users()
        .get(&id)
        .await
        .expect("zombified, not gone");
    assert_eq!(read["active"], json!(false));
    let asana = roster::connectors::find("asana").expect("in the catalogue");
    assert_eq!(
        asana.delete_means,
        roster::connectors::DeleteMeaning::Deactivates
    );
    // The rfc profile deletes.
    let plain = spawn_target(DevTargetArgs::default()).await;
    let created = plain
        .client
        .users()
        .create(&user("z@example.com"))
        .await
        .expect("user");
    let id = roster::scim::id_of(&created).expect("id").to_owned();
    plain.client.users().delete(&id).await.expect("deleted");
    let err = plain.client.users().get(&id).await.expect_err("gone");
    assert_eq!(status(&err), Some(404), "{err}");
}
