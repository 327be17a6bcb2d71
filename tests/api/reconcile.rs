//! Reconciliation end to end (DESIGN §6): accounts changed by hand in the target are found in
//! their class, a dry run changes nothing, a fix run corrects drift, missing and orphan
//! accounts through the queue and leaves unmatched and unmanaged ones alone, and a second run
//! finds nothing to do. Against the in-process dev-target and against the third-party peer.
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Hold, RelayedCall, Tap, TestApp, app_body, dev_target, event, joiner, peer, relay, scim_client,
    spawn_app,
};

const TOKEN: &str = "target-token";
const AT: &str = "2026-11-01T09:00:00Z";
const LATER: &str = "2026-11-02T09:00:00Z";

/// `helpers::eventually` with this module's 20 s.
async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    crate::helpers::eventually(what, Duration::from_secs(20), probe).await
}

/// Waits until the queue holds no pending or running job.
async fn settled(app: &TestApp) {
    app.settled_all(Duration::from_secs(20)).await;
}

/// Registers an app on the target at `base_url` (bearer `TOKEN`) with `settings` added to the
/// test defaults; returns its id.
async fn app_on(app: &TestApp, name: &str, base_url: &str, settings: Value) -> String {
    let mut body = app_body(
        name,
        json!({"base_url": base_url, "auth": {"type": "bearer", "token": TOKEN}}),
    );
    crate::helpers::merge(&mut body, &settings);
    app.create_app(&body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The id of the dev-target's account named `user_name` (empty if there is none).
fn account_id_named(target: &roster::dev_target::DevTarget, user_name: &str) -> String {
    target
        .users_snapshot()
        .iter()
        .find(|u| u["userName"] == user_name)
        .map(id_of)
        .unwrap_or_default()
}

/// Approves the held run `held` as the admin.
async fn approve(app: &TestApp, held: &Value) {
    let run_id = held["id"].as_str().unwrap_or_default();
    app.post(
        &format!("/api/v1/reconcile-runs/{run_id}/approve"),
        &json!({}),
    )
    .await
    .expect(200);
}

/// A fix-mode app on `base_url` whose deletion guard holds every run that would deprovision
/// more than one account (`unmatched`: accounts matching nobody are deprovisioned too).
async fn holding_app(app: &TestApp, name: &str, base_url: &str, unmatched: bool) -> String {
    app_on(
        app,
        name,
        base_url,
        json!({
            "reconcile": {"interval_minutes": 0, "mode": "fix", "deprovision_unmatched": unmatched},
            "deletion_guard": {"max_fraction": 1.0, "max_count": 1},
        }),
    )
    .await
}

async fn deactivated_links(app: &TestApp) -> usize {
    app.rows("SELECT id FROM link WHERE state = 'deactivated'")
        .await
        .len()
}

fn counts(report: &Value) -> [u64; 7] {
    let c = &report["counts"];
    [
        "in_sync",
        "drifted",
        "missing",
        "orphan",
        "unmatched",
        "unmanaged",
        "adoptable",
    ]
    .map(|class| c[class].as_u64().unwrap_or(u64::MAX))
}

/// The item about the account or person named `user_name`.
fn item<'a>(report: &'a Value, user_name: &str) -> &'a Value {
    report["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| {
            i["user_name"]
                .as_str()
                .is_some_and(|u| u.eq_ignore_ascii_case(user_name))
        })
        .unwrap_or(&Value::Null)
}

/// The target, edited "by hand" (as an admin of the app would), through roster's own SCIM
/// client rather than a second one written here.
struct Target {
    base: String,
    token: String,
}

impl Target {
    /// Changes made by hand in the dev-target `target`, through its SCIM API.
    fn by_hand(target: &roster::dev_target::DevTarget) -> Self {
        Self {
            base: target.base_url(),
            token: TOKEN.to_owned(),
        }
    }

    fn client(&self) -> roster::scim::ScimClient {
        scim_client(&self.base, &self.token)
    }

    /// Every user whose `userName` contains `marker`, sorted by userName.
    async fn users(&self, marker: &str) -> Vec<Value> {
        use futures::TryStreamExt as _;
        let query = roster::scim::ListQuery {
            filter: Some(format!(
                "userName co {}",
                roster::scim::filter::json_string(marker)
            )),
            attributes: Vec::new(),
            page_size: 500,
            overlapping: false,
        };
        let mut users: Vec<Value> = self
            .client()
            .users()
            .list_query(query)
            .try_collect()
            .await
            .expect("list users");
        users.sort_by_key(|u| u["userName"].as_str().unwrap_or_default().to_lowercase());
        users
    }

    async fn user(&self, marker: &str, user_name: &str) -> Option<Value> {
        self.users(marker).await.into_iter().find(|u| {
            u["userName"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(user_name))
        })
    }

    async fn patch(&self, id: &str, path: &str, value: Value) {
        let request = roster::scim::PatchRequest::new().replace(path, value);
        self.client()
            .users()
            .patch(id, &request)
            .await
            .expect("hand PATCH");
    }

    async fn delete(&self, id: &str) {
        self.client().users().delete(id).await.expect("hand DELETE");
    }

    async fn create(&self, user_name: &str) {
        self.client()
            .users()
            .create(&json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": user_name,
                "active": true,
                "emails": [{"value": user_name, "type": "work", "primary": true}],
            }))
            .await
            .expect("hand POST");
    }

    /// The group named `name`, if there is exactly one.
    async fn group(&self, name: &str) -> Option<Value> {
        let found = self
            .client()
            .groups()
            .find_by("displayName", name)
            .await
            .expect("list groups");
        match found.as_slice() {
            [group] => Some(group.clone()),
            _ => None,
        }
    }

    /// The member ids of the group named `name`, sorted; `None` without such a group.
    async fn member_ids(&self, name: &str) -> Option<Vec<String>> {
        Some(crate::helpers::member_ids(&self.group(name).await?))
    }

    /// One PATCH operation (`{"op", "path", "value"}`) on a group.
    async fn patch_group(&self, id: &str, operation: Value) {
        let op = operation["op"]
            .as_str()
            .and_then(roster::scim::PatchOp::parse)
            .expect("an op");
        let request = roster::scim::PatchRequest {
            operations: vec![roster::scim::PatchOperation {
                op,
                path: operation["path"].as_str().map(str::to_owned),
                value: operation.get("value").cloned(),
            }],
            if_match: None,
        };
        self.client()
            .groups()
            .patch(id, &request)
            .await
            .expect("hand PATCH of a group");
    }

    async fn delete_group(&self, id: &str) {
        self.client()
            .groups()
            .delete(id)
            .await
            .expect("hand DELETE of a group");
    }
}

/// The group item about the pushed group `name`.
fn group_item<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["resource"] == "group" && i["display_name"] == name)
        .unwrap_or(&Value::Null)
}

/// `(in_sync, drifted, missing, adoptable)` of the report's group counts.
fn group_counts(report: &Value) -> [u64; 4] {
    ["in_sync", "drifted", "missing", "adoptable"]
        .map(|class| report["groups"][class].as_u64().unwrap_or(u64::MAX))
}

/// Issue 6: a pushed group changed by hand in the target. Three joiners in a pushed static
/// group; by hand, one member is removed and a guest from another company added: a dry run
/// reports the group drifted with both differences and changes nothing, a fix restores the
/// exact membership through a PATCH, a second run finds nothing; the group deleted by hand is
/// `missing` and recreated with its members.
async fn group_drift_scenario(app: &TestApp, target: &Target, marker: &str) {
    let managed = format!("{marker}.example.com");
    let name = |who: &str| format!("{who}@{managed}");
    let group = format!("board-{marker}");
    let employee = |n: usize| format!("{marker}-G{n}");
    app.post(
        "/api/v1/groups",
        &json!({"name": group, "members": [employee(0), employee(1), employee(2)]}),
    )
    .await
    .expect(201);
    let app_id = app
        .create_app(&app_body(
            &format!("wiki-{marker}"),
            json!({
                "base_url": target.base,
                "auth": {"type": "bearer", "token": target.token},
                "scope": {"email_domains": [managed]},
                "group_push": [group],
                "max_concurrency": 1,
                "reconcile": {"interval_minutes": 0, "mode": "report"},
            }),
        ))
        .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (n, who) in ["ada", "bob", "cy"].iter().enumerate() {
        app.post_event(&joiner(
            &format!("{marker}-gj{n}"),
            &employee(n),
            AT,
            json!({"user_name": name(who), "email": name(who), "given_name": who, "family_name": "Test"}),
        ))
        .await;
    }
    let users = eventually("the joiners and their group", || async {
        settled(app).await;
        let users = target.users(marker).await;
        let members = target.member_ids(&group).await?;
        (users.len() == 3 && members.len() == 3).then_some(users)
    })
    .await;
    let id_of_user = |who: &str| {
        users
            .iter()
            .find(|u| u["userName"].as_str() == Some(name(who).as_str()))
            .map(id_of)
            .unwrap_or_default()
    };
    let mut wanted = vec![id_of_user("ada"), id_of_user("bob"), id_of_user("cy")];
    wanted.sort();
    assert_eq!(target.member_ids(&group).await, Some(wanted.clone()));

    // By hand: bob removed from the group, a guest from another company added to it.
    let guest_name = format!("guest@partner-{marker}.org");
    target.create(&guest_name).await;
    let guest = target
        .user(&format!("partner-{marker}"), &guest_name)
        .await
        .expect("the guest's account");
    let group_id = id_of(&target.group(&group).await.expect("the pushed group"));
    let bob = id_of_user("bob");
    target
        .patch_group(
            &group_id,
            json!({"op": "remove", "path": format!("members[value eq \"{bob}\"]")}),
        )
        .await;
    target
        .patch_group(
            &group_id,
            json!({"op": "add", "path": "members", "value": [{"value": id_of(&guest)}]}),
        )
        .await;
    let by_hand = target.member_ids(&group).await;

    let dry = app
        .reconcile_run(&app_id, json!({"dry_run": true, "mode": "fix"}))
        .await;
    assert_eq!(dry["state"], "completed", "{dry}");
    assert_eq!(dry["writes"], 0, "{dry}");
    let found = group_item(&dry, &group);
    assert_eq!(found["class"], "drifted", "{dry}");
    assert_eq!(found["action"], "patch", "{dry}");
    assert_eq!(found["target_id"], json!(group_id));
    assert_eq!(
        found["differences"],
        json!([{"path": "members",
                "roster": [{"value": bob, "display": name("bob")}],
                "target": [{"value": id_of(&guest), "display": guest_name}]}]),
        "{dry}"
    );
    assert_eq!(group_counts(&dry), [0, 1, 0, 0], "{dry}");
    settled(app).await;
    assert_eq!(
        target.member_ids(&group).await,
        by_hand,
        "a dry run changes nothing"
    );

    let fixed = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["state"], "completed", "{fixed}");
    assert_eq!(fixed["writes"], 1, "one group job: {fixed}");
    settled(app).await;
    assert_eq!(
        target.member_ids(&group).await,
        Some(wanted.clone()),
        "the fix restores the exact membership"
    );

    let again = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
    assert_eq!(again["writes"], 0, "{again}");
    assert_eq!(group_counts(&again), [1, 0, 0, 0], "{again}");
    assert_eq!(group_item(&again, &group)["class"], "in_sync");

    // Deleted by hand: missing, created again with its members.
    target.delete_group(&group_id).await;
    let dry = app
        .reconcile_run(&app_id, json!({"dry_run": true, "mode": "fix"}))
        .await;
    assert_eq!(group_item(&dry, &group)["class"], "missing", "{dry}");
    assert_eq!(group_item(&dry, &group)["action"], "create", "{dry}");
    assert_eq!(group_counts(&dry), [0, 0, 1, 0], "{dry}");
    assert_eq!(
        target.member_ids(&group).await,
        None,
        "a dry run creates nothing"
    );
    let fixed = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["writes"], 1, "{fixed}");
    settled(app).await;
    assert_eq!(
        target.member_ids(&group).await,
        Some(wanted),
        "the group is created again with its members"
    );
    let again = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
    assert_eq!(again["writes"], 0, "{again}");
    assert_eq!(group_counts(&again), [1, 0, 0, 0], "{again}");
    let puts = app
        .rows("SELECT id FROM operation WHERE method = 'PUT'")
        .await;
    assert!(puts.is_empty(), "membership is never PUT: {puts:?}");
}

#[tokio::test]
async fn reconcile_restores_a_pushed_group_changed_by_hand_in_the_dev_target() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    group_drift_scenario(&app, &hand, "gdt").await;
}

#[tokio::test]
async fn reconcile_restores_a_pushed_group_changed_by_hand_in_the_peer() {
    let Some((base, token, _turn)) = peer().await else {
        return;
    };
    let app = spawn_app().await;
    let hand = Target {
        base: base.trim_end_matches('/').to_owned(),
        token,
    };
    let marker = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    group_drift_scenario(&app, &hand, &marker).await;
}

fn id_of(user: &Value) -> String {
    user["id"].as_str().unwrap_or_default().to_owned()
}

/// The DESIGN scenario: four joiners and a leaver delivered, then by hand in the target: a
/// changed name (drift), a deleted account (missing), the leaver re-activated (orphan), a ghost
/// in the managed domain (unmatched) and a guest from another company (unmanaged).
async fn drift_scenario(app: &TestApp, target: &Target, marker: &str, domain: &str) {
    let managed = format!("{marker}.{domain}");
    let app_id = app
        .create_app(&app_body(
            &format!("crm-{marker}"),
            json!({
                "base_url": target.base,
                "auth": {"type": "bearer", "token": target.token},
                "scope": {"email_domains": [managed]},
                "max_concurrency": 1,
                "reconcile": {"interval_minutes": 0, "mode": "report"},
            }),
        ))
        .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = |who: &str| format!("{who}@{managed}");
    for (n, who) in ["ada", "bob", "cy", "dee", "lee"].iter().enumerate() {
        let employee = format!("{marker}-E{n}");
        app.post_event(&joiner(
            &format!("{marker}-j{n}"),
            &employee,
            AT,
            json!({"user_name": name(who), "email": name(who), "given_name": who, "family_name": "Test"}),
        ))
        .await;
    }
    // A leaver before their joiner was delivered never gets an account: wait first.
    eventually("the joiners to be delivered", || async {
        settled(app).await;
        (target.users(marker).await.len() == 5).then_some(())
    })
    .await;
    app.post_event(&event(
        &format!("{marker}-l4"),
        "leaver",
        &format!("{marker}-E4"),
        LATER,
        json!({}),
    ))
    .await;
    eventually("the joiners and the leaver to be delivered", || async {
        settled(app).await;
        let users = target.users(marker).await;
        let leaver_inactive = users.iter().any(|u| {
            u["userName"].as_str() == Some(name("lee").as_str()) && u["active"] == json!(false)
        });
        (users.len() == 5 && leaver_inactive && deactivated_links(app).await == 1).then_some(())
    })
    .await;

    // By hand in the target.
    let ada = target
        .user(marker, &name("ada"))
        .await
        .expect("ada's account");
    target
        .patch(&id_of(&ada), "name.givenName", json!("Adaa"))
        .await;
    let bob = target
        .user(marker, &name("bob"))
        .await
        .expect("bob's account");
    target.delete(&id_of(&bob)).await;
    let lee = target
        .user(marker, &name("lee"))
        .await
        .expect("lee's account");
    target.patch(&id_of(&lee), "active", json!(true)).await;
    target.create(&name("ghost")).await;
    let guest = format!("guest@partner-{marker}.org");
    target.create(&guest).await;

    // A dry run reports every class and writes nothing.
    let before = target.users(marker).await;
    let dry = app
        .reconcile_run(&app_id, json!({"dry_run": true, "mode": "fix"}))
        .await;
    assert_eq!(dry["state"], "completed", "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["writes"], 0);
    assert_eq!(item(&dry, &name("ada"))["class"], "drifted", "{dry}");
    assert_eq!(item(&dry, &name("ada"))["action"], "patch");
    assert_eq!(
        item(&dry, &name("ada"))["differences"],
        json!([{"path": "name.givenName", "roster": "ada", "target": "Adaa"}])
    );
    assert_eq!(item(&dry, &name("bob"))["class"], "missing");
    assert_eq!(item(&dry, &name("bob"))["action"], "create");
    assert_eq!(item(&dry, &name("lee"))["class"], "orphan");
    assert_eq!(item(&dry, &name("lee"))["action"], "deactivate");
    assert_eq!(item(&dry, &name("ghost"))["class"], "unmatched");
    assert_eq!(item(&dry, &name("ghost"))["action"], "none");
    assert_eq!(item(&dry, &guest)["class"], "unmanaged");
    assert_eq!(item(&dry, &guest)["action"], "none");
    assert_eq!(item(&dry, &name("cy"))["class"], "in_sync");
    let [in_sync, drifted, missing, orphan, unmatched, _, adoptable] = counts(&dry);
    assert_eq!(
        (in_sync, drifted, missing, orphan, unmatched, adoptable),
        (2, 1, 1, 1, 1, 0),
        "{dry}"
    );
    settled(app).await;
    assert_eq!(
        target.users(marker).await,
        before,
        "a dry run changes nothing"
    );

    // A fix run corrects drift, missing and orphan through the queue; the ghost and the guest
    // stay as they are.
    let fixed = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["state"], "completed", "{fixed}");
    assert_eq!(fixed["writes"], 3, "{fixed}");
    settled(app).await;
    let after = target.users(marker).await;
    let find = |user_name: &str| {
        after
            .iter()
            .find(|u| {
                u["userName"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(user_name))
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find(&name("ada"))["name"]["givenName"], "ada");
    assert_eq!(
        find(&name("bob"))["name"]["givenName"],
        "bob",
        "bob is created again"
    );
    assert_eq!(
        find(&name("lee"))["active"],
        false,
        "the orphan is deactivated"
    );
    let ghost = find(&name("ghost"));
    assert_ne!(
        ghost["active"], false,
        "unmatched is listed, not touched: {ghost}"
    );
    assert_eq!(find(&guest)["active"], true, "unmanaged is never touched");
    let jobs = app
        .rows("SELECT lane, state FROM job WHERE lane = 'reconcile'")
        .await;
    assert!(
        jobs.len() >= 3 && jobs.iter().all(|j| j["state"] == "done"),
        "{jobs:?}"
    );

    // A second run right after finds no drift and makes no writes.
    let again = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
    assert_eq!(again["state"], "completed", "{again}");
    assert_eq!(again["writes"], 0, "{again}");
    let [in_sync, drifted, missing, orphan, unmatched, _, adoptable] = counts(&again);
    assert_eq!(
        (in_sync, drifted, missing, orphan, unmatched, adoptable),
        (5, 0, 0, 0, 1, 0),
        "{again}"
    );
    assert_eq!(item(&again, &guest)["class"], "unmanaged");
    settled(app).await;
    assert_eq!(
        target.users(marker).await,
        after,
        "the second run wrote nothing"
    );

    let listed = app
        .get(&format!("/api/v1/reconcile-runs?app={app_id}"))
        .await
        .expect(200);
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            again["id"].as_str(),
            fixed["id"].as_str(),
            dry["id"].as_str()
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>(),
        "newest first"
    );
}

#[tokio::test]
async fn reconcile_finds_and_fixes_drift_in_the_dev_target() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    drift_scenario(&app, &hand, "dt", "example.com").await;
}

#[tokio::test]
async fn reconcile_finds_and_fixes_drift_in_the_peer() {
    let Some((base, token, _turn)) = peer().await else {
        return;
    };
    let app = spawn_app().await;
    let hand = Target {
        base: base.trim_end_matches('/').to_owned(),
        token,
    };
    let marker = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    drift_scenario(&app, &hand, &marker, "example.com").await;
}

#[tokio::test]
async fn mass_deprovisioning_waits_for_approval() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    let app_id = app_on(
        &app,
        "crm",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
            "deletion_guard": {"max_fraction": 1.0, "max_count": 5},
        }),
    )
    .await;
    for n in 0..12 {
        let who = format!("p{n}@example.com");
        app.post_event(&joiner(
            &format!("j{n}"),
            &format!("P{n}"),
            AT,
            json!({"user_name": who}),
        ))
        .await;
    }
    eventually("twelve accounts", || async {
        settled(&app).await;
        (hand.users("example.com").await.len() == 12).then_some(())
    })
    .await;
    for n in 0..12 {
        app.post_event(&event(
            &format!("l{n}"),
            "leaver",
            &format!("P{n}"),
            LATER,
            json!({}),
        ))
        .await;
    }
    eventually("twelve deactivated accounts", || async {
        settled(&app).await;
        let users = hand.users("example.com").await;
        // The link is written after the PATCH: wait for it too, or a retried job could
        // deactivate again after the hand edit below.
        let deactivated = deactivated_links(&app).await;
        (users.len() == 12
            && users.iter().all(|u| u["active"] == json!(false))
            && deactivated == 12)
            .then_some(())
    })
    .await;
    // Someone re-activates every leaver's account by hand (or a wrong scope makes them all
    // orphans): too many deprovisions at once.
    for user in hand.users("example.com").await {
        hand.patch(&id_of(&user), "active", json!(true)).await;
    }

    let run = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(run["state"], "awaiting_approval", "{run}");
    assert_eq!(counts(&run)[3], 12, "twelve orphans: {run}");
    assert_eq!(run["writes"], 0);
    let items = run["items"].as_array().cloned().unwrap_or_default();
    assert!(items.iter().all(|i| i["held"] == true), "{run}");
    settled(&app).await;
    assert!(
        hand.users("example.com")
            .await
            .iter()
            .all(|u| u["active"] == json!(true)),
        "nothing is deprovisioned before approval"
    );

    let id = run["id"].as_str().unwrap_or_default();
    let reader = app.key(&["apps:write"]).await;
    app.request(
        "POST",
        &format!("/api/v1/reconcile-runs/{id}/approve"),
        Some(&reader),
        Some(&json!({})),
    )
    .await
    .problem(403);
    let approved = app
        .post(&format!("/api/v1/reconcile-runs/{id}/approve"), &json!({}))
        .await
        .expect(200);
    assert_eq!(approved["jobs_enqueued"], 12);
    app.post(&format!("/api/v1/reconcile-runs/{id}/approve"), &json!({}))
        .await
        .problem(409);
    settled(&app).await;
    assert!(
        hand.users("example.com")
            .await
            .iter()
            .all(|u| u["active"] == json!(false)),
        "approved deprovisions are applied"
    );
    let report = app
        .get(&format!("/api/v1/reconcile-runs/{id}"))
        .await
        .expect(200);
    assert_eq!(report["state"], "completed");
    assert_eq!(report["writes"], 12);
    let twice = app.rows("SELECT id FROM job WHERE attempts > 1").await;
    assert!(twice.is_empty(), "every job delivered once: {twice:?}");
    let audit = app
        .rows("SELECT action FROM audit WHERE action LIKE 'reconcile.%'")
        .await;
    assert!(
        audit.iter().any(|a| a["action"] == "reconcile.approve"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_second_run_is_refused_while_one_is_running() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let app_id = app_on(
        &app,
        "crm",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0},
        }),
    )
    .await;
    // A run row left `running` (as by a run in progress) blocks the next one.
    app.rows(&format!(
        "INSERT INTO reconcile_run (id, app_id, state, dry_run, mode, counts, writes, started_at) \
         VALUES ('00000000-0000-0000-0000-00000000000a', '{app_id}', 'running', false, 'report', '{{}}', 0, '{}')",
        chrono::Utc::now().to_rfc3339()
    ))
    .await;
    app.post(&format!("/api/v1/apps/{app_id}/reconcile"), &json!({}))
        .await
        .problem(409);
    app.post(
        "/api/v1/apps/00000000-0000-0000-0000-000000000000/reconcile",
        &json!({}),
    )
    .await
    .problem(404);
    app.post(
        &format!("/api/v1/apps/{app_id}/reconcile"),
        &json!({"mode": "sideways"}),
    )
    .await
    .problem(400);
}

#[tokio::test]
async fn unmatched_accounts_are_deactivated_only_when_the_app_asks() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    let app_id = app_on(
        &app,
        "crm",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0, "mode": "fix", "deprovision_unmatched": true},
        }),
    )
    .await;
    hand.create("ghost@example.com").await;
    hand.create("guest@partner.org").await;

    let fixed = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(
        item(&fixed, "ghost@example.com")["action"],
        "deactivate",
        "{fixed}"
    );
    assert_eq!(
        item(&fixed, "guest@partner.org")["action"],
        "none",
        "{fixed}"
    );
    assert_eq!(fixed["writes"], 1, "{fixed}");
    settled(&app).await;
    let ghost = hand.user("example.com", "ghost@example.com").await;
    assert_eq!(ghost.map(|g| g["active"].clone()), Some(json!(false)));
    let guest = hand.user("partner.org", "guest@partner.org").await;
    assert_eq!(guest.map(|g| g["active"].clone()), Some(json!(true)));
    let accounts = app
        .rows("SELECT state FROM job WHERE resource_kind = 'account'")
        .await;
    assert_eq!(accounts, vec![json!({"state": "done"})]);

    let again = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(item(&again, "ghost@example.com")["class"], "unmatched");
    assert_eq!(item(&again, "ghost@example.com")["action"], "none");
    assert_eq!(again["writes"], 0, "{again}");
}

#[tokio::test]
async fn the_scheduler_runs_apps_whose_interval_has_passed() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let due = app_on(
        &app,
        "due",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 5},
        }),
    )
    .await;
    app.create_app(&app_body(
        "off",
        json!({
            "base_url": target.base_url(),
            "auth": {"type": "bearer", "token": TOKEN},
            "reconcile": {"interval_minutes": 0},
        }),
    ))
    .await;
    // Both registered long ago; the scheduler looks at startup, then every minute.
    app.rows("UPDATE app SET created_at = '2020-01-01T00:00:00+00:00'")
        .await;
    let app = app.restart().await;
    let runs = eventually("a scheduled run", || async {
        let runs = app.get("/api/v1/reconcile-runs").await.expect(200);
        let items = runs["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .all(|r| r["state"] != "running")
            .then_some(items)
            .filter(|items| !items.is_empty())
    })
    .await;
    assert_eq!(runs.len(), 1, "only the app with an interval: {runs:?}");
    assert_eq!(runs[0]["app_id"], json!(due));
    assert_eq!(runs[0]["state"], "completed", "{runs:?}");
    assert_eq!(runs[0]["mode"], "report");
}

#[tokio::test]
async fn two_starts_at_once_make_one_run() {
    // The target holds every call until both starts are answered, so the first run is still
    // `running` when the second start arrives, however fast or slow this machine is.
    let target = dev_target(TOKEN).await;
    let hold = std::sync::Arc::new(Hold::default());
    let held = relay(&target.base_url(), hold.clone()).await;
    let app = spawn_app().await;
    let app_id = app_on(
        &app,
        "slow",
        &held,
        json!({
            "reconcile": {"interval_minutes": 0},
        }),
    )
    .await;
    let path = format!("/api/v1/apps/{app_id}/reconcile");
    let body = json!({});
    let (a, b) = tokio::join!(app.post(&path, &body), app.post(&path, &body));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409], "{} / {}", a.text, b.text);
    // The one run reads the target once let through, and completes.
    hold.open();
    let runs = eventually("the run to finish", || async {
        let runs = app.get("/api/v1/reconcile-runs").await.expect(200);
        let items = runs["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .all(|r| r["state"] != "running")
            .then_some(items)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["state"], "completed", "{runs:?}");
    assert!(hold.arrived.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

/// `roster reconcile --json` with its output piped (as a script runs it): exactly one JSON
/// document on stdout, and no progress bar on stderr (not a terminal).
#[tokio::test]
async fn roster_reconcile_json_prints_one_document_and_no_progress_bar_when_piped() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    let app_id = app_on(
        &app,
        "cli",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0},
        }),
    )
    .await;
    for n in 0..3 {
        let who = format!("c{n}@example.com");
        app.post_event(&joiner(
            &format!("c{n}"),
            &format!("C{n}"),
            AT,
            json!({"user_name": who}),
        ))
        .await;
    }
    eventually("three accounts", || async {
        settled(&app).await;
        (hand.users("example.com").await.len() == 3).then_some(())
    })
    .await;

    let out = app
        .roster_command(&["reconcile", "--app", &app_id, "--dry-run", "--json"])
        .env("ROSTER_ADMIN_TOKEN", crate::helpers::ADMIN)
        .output()
        .await
        .expect("run roster reconcile");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report["counts"]["in_sync"], 3, "{report}");
    assert_eq!(report["dry_run"], true);
    assert!(
        !stderr.contains("accounts read") && !stderr.contains('\r'),
        "no progress bar when not on a terminal: {stderr}"
    );
}

// ---- Issue 20 A3, A4, E: targets that misbehave, and accounts that are not evidence enough.

/// How a scripted stub target in front of the dev-target misbehaves: only its listings
/// (`GET /Users`, `GET /Groups` without an id) are changed; every other call passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Answers page 1 whatever `startIndex` says.
    IgnoresStartIndex,
    /// Starts every page after the first one account early, so the previous page's last
    /// account comes again and the count of accounts read reaches `totalResults` too soon.
    RepeatsItems,
    /// Sends no `totalResults`, and pages of at most 2 accounts whatever `count` asks.
    OmitsTotal,
    /// Leaves `members` out of the groups it lists (a GET by id still has them).
    OmitsMembers,
}

/// A stub target misbehaving as `how` in front of the SCIM server at `upstream` (a base
/// URL); returns the stub's base URL.
async fn misbehaving(upstream: &str, how: Misbehaviour) -> String {
    relay(upstream, std::sync::Arc::new(how)).await
}

impl Misbehaviour {
    /// Only listings (`GET /Users`, `GET /Groups` without an id) misbehave.
    fn listing(call: &RelayedCall) -> bool {
        call.method == "GET" && (call.path.ends_with("/Users") || call.path.ends_with("/Groups"))
    }
}

impl Tap for Misbehaviour {
    async fn request(&self, call: &mut RelayedCall) {
        if !Self::listing(call) {
            return;
        }
        for (key, value) in &mut call.query {
            let n: u64 = value.parse().unwrap_or(1);
            match (*self, key.as_str()) {
                (Misbehaviour::IgnoresStartIndex, "startIndex") => *value = "1".to_owned(),
                (Misbehaviour::RepeatsItems, "startIndex") => {
                    *value = n.saturating_sub(1).max(1).to_string();
                }
                (Misbehaviour::OmitsTotal, "count") => *value = n.min(2).to_string(),
                _ => {}
            }
        }
    }

    fn answer(&self, call: &RelayedCall, body: &mut Vec<u8>) {
        if !Self::listing(call) {
            return;
        }
        let Ok(mut page) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        match self {
            Misbehaviour::OmitsTotal => {
                if let Some(page) = page.as_object_mut() {
                    page.remove("totalResults");
                }
            }
            Misbehaviour::OmitsMembers => {
                for group in page["Resources"].as_array_mut().into_iter().flatten() {
                    if let Some(group) = group.as_object_mut() {
                        group.remove("members");
                    }
                }
            }
            Misbehaviour::IgnoresStartIndex | Misbehaviour::RepeatsItems => return,
        }
        *body = serde_json::to_vec(&page).unwrap_or_default();
    }
}

/// The user links as stored: `(identity, target id, state)`.
async fn user_links(app: &TestApp) -> Vec<Value> {
    app.rows(
        "SELECT resource_id, target_id, state FROM link WHERE resource_kind = 'user' ORDER BY resource_id",
    )
    .await
}

/// The provisioning log's rows after row `after`.
async fn calls_after(app: &TestApp, after: i64) -> Vec<Value> {
    app.rows(&format!(
        "SELECT operation, method, path, status FROM operation WHERE id > {after} ORDER BY id"
    ))
    .await
}

async fn last_call(app: &TestApp) -> i64 {
    let last = app
        .rows("SELECT id FROM operation ORDER BY id DESC LIMIT 1")
        .await;
    let id = last.first().map(|row| row["id"].clone());
    // Some drivers hand integers over as text.
    id.and_then(|id| {
        id.as_i64()
            .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
    })
    .unwrap_or(0)
}

/// Six joiners provisioned through a stub target misbehaving as `how` (app page size
/// `page_size`), then a fix run. Asserts that the run changed no link and that no job touched
/// the target; returns the run's report.
async fn run_against(how: Misbehaviour, page_size: u32) -> Value {
    let target = dev_target(TOKEN).await;
    let stub = misbehaving(&target.base_url(), how).await;
    let app = spawn_app().await;
    let app_id = app_on(
        &app,
        "crm",
        &stub,
        json!({
            "quirks": {"page_size": page_size},
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
        }),
    )
    .await;
    for n in 0..6 {
        app.post_event(&joiner(
            &format!("stub-{n}"),
            &format!("S{n}"),
            AT,
            json!({}),
        ))
        .await;
    }
    let before = eventually("six linked accounts", || async {
        settled(&app).await;
        let links = user_links(&app).await;
        let linked = links
            .iter()
            .filter(|l| l["state"] == "linked" && l["target_id"].is_string())
            .count();
        (linked == 6).then_some(links)
    })
    .await;
    assert_eq!(target.users_snapshot().len(), 6);
    let mark = last_call(&app).await;

    let report = app.reconcile_run(&app_id, json!({})).await;
    settled(&app).await;
    assert_eq!(
        user_links(&app).await,
        before,
        "no link forgotten or moved: {report}"
    );
    assert_eq!(
        calls_after(&app, mark).await,
        Vec::<Value>::new(),
        "no job touched the target (no look-up, create or adoption): {report}"
    );
    assert_eq!(target.users_snapshot().len(), 6, "no duplicate: {report}");
    report
}

#[tokio::test]
async fn a_target_that_ignores_start_index_fails_the_run_and_forgets_no_link() {
    let report = run_against(Misbehaviour::IgnoresStartIndex, 2).await;
    assert_eq!(report["state"], "failed", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("incomplete") && error.contains("startIndex"),
        "{report}"
    );
    assert_eq!(report["counts"]["missing"], 0, "{report}");
}

#[tokio::test]
async fn a_target_that_repeats_items_across_pages_fails_the_run_and_forgets_no_link() {
    // Pages of 2 starting one early: 1-2, 2-3, 4-5; six read by count, five distinct.
    let report = run_against(Misbehaviour::RepeatsItems, 2).await;
    assert_eq!(report["state"], "failed", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("read 5 distinct accounts of the 6"),
        "{report}"
    );
    assert_eq!(report["counts"]["missing"], 0, "{report}");
}

#[tokio::test]
async fn a_target_without_total_results_has_unseen_linked_accounts_confirmed_by_id() {
    // Pages of at most 2 when 4 were asked for, and no totalResults: the listing ends after
    // page 1. The four linked accounts not seen are read by id, and found.
    let report = run_against(Misbehaviour::OmitsTotal, 4).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(counts(&report), [6, 0, 0, 0, 0, 0, 0], "{report}");
    assert_eq!(report["writes"], 0, "{report}");
}

#[tokio::test]
async fn a_linked_account_deleted_in_the_target_is_confirmed_gone_before_its_link_goes() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    let app_id = app_on(
        &app,
        "crm",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
        }),
    )
    .await;
    app.post_event(&joiner("gone-1", "G1", AT, json!({}))).await;
    let ada = eventually("the account", || async {
        settled(&app).await;
        target.users_snapshot().first().cloned()
    })
    .await;
    hand.delete(&id_of(&ada)).await;
    let mark = last_call(&app).await;
    let report = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(item(&report, "g1")["class"], "missing", "{report}");
    settled(&app).await;
    // Created again, and linked to the new account.
    let again = target.users_snapshot();
    assert_eq!(again.len(), 1);
    assert_ne!(id_of(&again[0]), id_of(&ada));
    let links = user_links(&app).await;
    assert_eq!(links[0]["target_id"], json!(id_of(&again[0])), "{links:?}");
    let creates: Vec<Value> = calls_after(&app, mark)
        .await
        .into_iter()
        .filter(|c| c["method"] == "POST")
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
}

#[tokio::test]
async fn a_pushed_group_listed_without_members_is_read_by_id_and_loses_no_member() {
    let target = dev_target(TOKEN).await;
    let stub = misbehaving(&target.base_url(), Misbehaviour::OmitsMembers).await;
    let app = spawn_app().await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "board", "members": ["M0", "M1", "M2"]}),
    )
    .await
    .expect(201);
    let app_id = app_on(
        &app,
        "wiki",
        &stub,
        json!({
            "group_push": ["board"],
            "max_concurrency": 1,
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
        }),
    )
    .await;
    for n in 0..3 {
        app.post_event(&joiner(&format!("gm-{n}"), &format!("M{n}"), AT, json!({})))
            .await;
    }
    let members = || {
        target
            .groups_snapshot()
            .first()
            .and_then(|g| g["members"].as_array().map(Vec::len))
    };
    eventually("the pushed group with three members", || async {
        settled(&app).await;
        (members() == Some(3)).then_some(())
    })
    .await;
    let mark = last_call(&app).await;
    let report = app.reconcile_run(&app_id, json!({})).await;
    settled(&app).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(group_item(&report, "board")["class"], "in_sync", "{report}");
    assert_eq!(report["writes"], 0, "{report}");
    assert_eq!(members(), Some(3));
    assert_eq!(
        calls_after(&app, mark).await,
        Vec::<Value>::new(),
        "{report}"
    );
}

/// An app on the dev-target with `n` joiners provisioned and linked; returns the app id.
async fn provisioned(
    app: &TestApp,
    target: &roster::dev_target::DevTarget,
    people: &[&str],
) -> String {
    let app_id = app_on(
        app,
        "crm",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
        }),
    )
    .await;
    for who in people {
        app.post_event(&joiner(&format!("j-{who}"), who, AT, json!({})))
            .await;
    }
    eventually("the accounts", || async {
        settled(app).await;
        (target.users_snapshot().len() == people.len()).then_some(())
    })
    .await;
    app_id
}

/// A second account carrying `user_name` in another case (SCIM compares userName ignoring
/// case, so it matches the same person), with a work address in the managed domain; returns
/// its id.
fn duplicate(target: &roster::dev_target::DevTarget, user_name: &str) -> String {
    use roster::dev_target::Kind;
    let created = target
        .insert(
            Kind::User,
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": format!("placeholder-{user_name}"),
                "active": true,
                "emails": [{"value": format!("{user_name}@example.com"), "primary": true}],
            }),
        )
        .expect("a second account");
    let id = id_of(&created);
    let upper = user_name.to_uppercase();
    assert!(target.edit(Kind::User, &id, |u| u["userName"] = json!(upper)));
    id
}

#[tokio::test]
async fn a_duplicate_of_a_linked_account_is_a_conflict_and_the_link_stays() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let app_id = provisioned(&app, &target, &["D1"]).await;
    let before = user_links(&app).await;
    let twin = duplicate(&target, "d1");
    for _ in 0..2 {
        // Twice: the second run must not move the link back either.
        let report = app.reconcile_run(&app_id, json!({})).await;
        settled(&app).await;
        assert_eq!(report["state"], "completed", "{report}");
        let found = report["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["target_id"] == json!(twin))
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(found["class"], "conflict", "{report}");
        assert_eq!(found["action"], "none", "{report}");
        assert_eq!(report["counts"]["conflict"], 1, "{report}");
        assert_eq!(report["writes"], 0, "{report}");
        assert_eq!(user_links(&app).await, before, "{report}");
    }
}

/// In front of the dev-target: once the first unfiltered `/Users` listing was answered,
/// the account `rename` names is renamed by hand (handed to someone else) in the target.
struct RenameAfterListing {
    target: roster::dev_target::DevTarget,
    rename: std::sync::Mutex<Option<(String, String)>>,
}

impl Tap for RenameAfterListing {
    fn answer(&self, call: &RelayedCall, _body: &mut Vec<u8>) {
        let listing = call.method == "GET"
            && call.path.ends_with("/Users")
            && !call.query.iter().any(|(k, _)| k == "filter");
        if !listing {
            return;
        }
        let taken = self.rename.lock().ok().and_then(|mut r| r.take());
        if let Some((id, user_name)) = taken {
            self.target.edit(roster::dev_target::Kind::User, &id, |u| {
                u["userName"] = json!(user_name);
            });
        }
    }
}

/// A fix run adopts through the person's own job, never from its copy of the account: an
/// account renamed by hand (handed to someone else) after the run listed it is not linked to
/// the person it matched then, who gets an account of their own; the other unlinked person's
/// account is adopted as it was.
#[tokio::test]
async fn a_run_adopts_only_an_account_that_still_matches_when_the_person_s_job_asks() {
    let app = spawn_app().await;
    let tap = std::sync::Arc::new(RenameAfterListing {
        target: dev_target(TOKEN).await,
        rename: std::sync::Mutex::new(None),
    });
    let stub = relay(&tap.target.base_url(), tap.clone()).await;
    let app_id = app_on(
        &app,
        "adopting",
        &stub,
        json!({"reconcile": {"interval_minutes": 0, "mode": "fix"}}),
    )
    .await;
    for who in ["AD1", "AD2"] {
        app.post_event(&joiner(&format!("j-{who}"), who, AT, json!({})))
            .await;
    }
    let accounts = eventually("the accounts", || async {
        settled(&app).await;
        let users = tap.target.users_snapshot();
        (users.len() == 2).then_some(users)
    })
    .await;
    let id_named = |name: &str| {
        accounts
            .iter()
            .find(|u| u["userName"] == name)
            .map(id_of)
            .unwrap_or_default()
    };
    let (kept, handed_on) = (id_named("ad1"), id_named("ad2"));
    // The links are lost (restored from an old backup): both accounts are adoptable.
    use sea_orm::ConnectionTrait as _;
    app.db
        .execute_unprepared("DELETE FROM link")
        .await
        .expect("drop the links");
    if let Ok(mut rename) = tap.rename.lock() {
        *rename = Some((handed_on.clone(), "colleague".to_owned()));
    }
    let report = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["counts"]["adoptable"], 2, "{report}");
    settled(&app).await;
    let links = user_links(&app).await;
    let linked: Vec<&str> = links
        .iter()
        .filter_map(|l| l["target_id"].as_str())
        .collect();
    assert!(linked.contains(&kept.as_str()), "AD1 adopted: {links:?}");
    assert!(
        !linked.contains(&handed_on.as_str()),
        "the colleague's account is nobody's: {links:?}"
    );
    let colleague = tap.target.user(&handed_on).unwrap_or_default();
    assert_eq!(colleague["userName"], "colleague", "untouched: {colleague}");
    assert!(
        tap.target
            .users_snapshot()
            .iter()
            .any(|u| u["userName"] == "ad2"),
        "AD2 got an account of their own"
    );
}

/// In front of the dev-target: when the run asks by id for the account `gone` (a linked
/// account its listing did not show), jobs are taken to have moved links meanwhile: each
/// `(identity id, target id)` of `moves` is written to the store.
struct MoveLinksMidRun {
    db: sea_orm::DatabaseConnection,
    gone: String,
    moves: Vec<(String, String)>,
}

impl Tap for MoveLinksMidRun {
    async fn request(&self, call: &mut RelayedCall) {
        use sea_orm::ConnectionTrait as _;
        if !(call.method == "GET" && call.path.ends_with(&format!("/Users/{}", self.gone))) {
            return;
        }
        for (identity, target) in &self.moves {
            self.db
                .execute_unprepared(&format!(
                    "UPDATE link SET target_id = '{target}', state = 'linked' \
                     WHERE resource_kind = 'user' AND resource_id = '{identity}'"
                ))
                .await
                .expect("a job moves the link");
        }
    }
}

/// In front of the dev-target: the first unfiltered `/Users` listing marks the run reading it
/// (every running run not waiting for a slot) `failed`, as a newer run's start gives up one
/// still running after six hours.
struct GiveUpRunsMidListing {
    db: sea_orm::DatabaseConnection,
    done: std::sync::atomic::AtomicBool,
}

impl Tap for GiveUpRunsMidListing {
    async fn request(&self, call: &mut RelayedCall) {
        use sea_orm::ConnectionTrait as _;
        let listing = call.method == "GET"
            && call.path.ends_with("/Users")
            && !call.query.iter().any(|(k, _)| k == "filter");
        if !listing || self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.db
            .execute_unprepared(
                "UPDATE reconcile_run SET state = 'failed', error = 'abandoned: still running after 6 hours' \
                 WHERE state = 'running' AND waiting = false",
            )
            .await
            .expect("give the run up");
    }
}

/// A run given up while it ran (a newer run's start fails one still running after six
/// hours) fixes nothing more and stays `failed`: its drift fix is not enqueued, and its end
/// does not write `completed` over the newer run's verdict.
#[tokio::test]
async fn a_run_given_up_while_it_ran_fixes_nothing_and_stays_failed() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.run_engine = false;
        c.reconcile_concurrency = 1;
    })
    .await;
    let target = dev_target(TOKEN).await;
    let hand = Target::by_hand(&target);
    let tap = std::sync::Arc::new(GiveUpRunsMidListing {
        db: app.db.clone(),
        done: std::sync::atomic::AtomicBool::new(false),
    });
    let stub = relay(&target.base_url(), tap).await;
    let given_up = app_on(
        &app,
        "given-up",
        &stub,
        json!({"reconcile": {"interval_minutes": 0, "mode": "fix"}}),
    )
    .await;
    let other_target = dev_target(TOKEN).await;
    let other = app_on(
        &app,
        "next",
        &other_target.base_url(),
        json!({"reconcile": {"interval_minutes": 0}}),
    )
    .await;
    app.post_event(&joiner("gu-in", "GU1", AT, json!({}))).await;
    // The person's account, drifted by hand, linked as a job would have.
    hand.create("gu1").await;
    let account = account_id_named(&target, "gu1");
    let person = app.get("/api/v1/identities/GU1").await.expect(200)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    use sea_orm::ConnectionTrait as _;
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO link (app_id, resource_kind, resource_id, target_id, state, created_at, updated_at) \
             VALUES ('{given_up}', 'user', '{person}', '{account}', 'linked', '{AT}', '{AT}')"
        ))
        .await
        .expect("a link");
    app.db
        .execute_unprepared("DELETE FROM job")
        .await
        .expect("no job");

    let run = app
        .post(&format!("/api/v1/apps/{given_up}/reconcile"), &json!({}))
        .await
        .expect(202);
    // One run at a time: the other app's run starts only once the given-up run has ended.
    let next = app.reconcile_run(&other, json!({})).await;
    assert_eq!(next["state"], "completed", "{next}");
    let report = app
        .get(&format!(
            "/api/v1/reconcile-runs/{}",
            run["id"].as_str().unwrap_or_default()
        ))
        .await
        .expect(200);
    assert_eq!(report["state"], "failed", "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("abandoned")),
        "{report}"
    );
    let jobs = app.rows("SELECT resource_id FROM job").await;
    assert_eq!(jobs, Vec::<Value>::new(), "nothing fixed: {jobs:?}");
}

/// A fix run's findings are made against the links as it read them. A job that moved a
/// person's link while the run was reading (re-created or re-linked the account) keeps it:
/// the run neither points it back at the drifted account it read nor drops it for a person
/// it found missing, and enqueues no fix for either. An unsure create's link (pending, no
/// account) is left for its job, which asks the target afresh.
#[tokio::test]
async fn a_fix_run_leaves_alone_a_link_a_job_moved_while_it_ran() {
    use sea_orm::ConnectionTrait as _;
    let app = crate::helpers::spawn_planner().await;
    let target = dev_target(TOKEN).await;
    let hand = Target::by_hand(&target);
    for who in ["MV1", "MV2", "MV3"] {
        app.post_event(&joiner(&format!("j-{who}"), who, AT, json!({})))
            .await;
    }
    for name in ["mv1", "mv1-new", "mv2-new"] {
        hand.create(name).await;
    }
    let id_named = |name: &str| account_id_named(&target, name);
    let person = |employee: &str| {
        let app = &app;
        let employee = employee.to_owned();
        async move {
            app.get(&format!("/api/v1/identities/{employee}"))
                .await
                .expect(200)["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let (mv1, mv2, mv3) = (
        person("MV1").await,
        person("MV2").await,
        person("MV3").await,
    );
    let tap = std::sync::Arc::new(MoveLinksMidRun {
        db: app.db.clone(),
        gone: "gone-account".into(),
        moves: vec![
            (mv1.clone(), id_named("mv1-new")),
            (mv2.clone(), id_named("mv2-new")),
        ],
    });
    let stub = relay(&target.base_url(), tap).await;
    let app_id = app_on(
        &app,
        "moving",
        &stub,
        json!({"reconcile": {"interval_minutes": 0, "mode": "fix"}}),
    )
    .await;
    // MV1 linked to an account that drifted, MV2 to one that is gone, MV3's create unsure.
    let links = [
        (&mv1, format!("'{}'", id_named("mv1")), "linked"),
        (&mv2, "'gone-account'".to_owned(), "linked"),
        (&mv3, "NULL".to_owned(), "pending"),
    ];
    for (identity, target_id, state) in links {
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO link (app_id, resource_kind, resource_id, target_id, state, created_at, updated_at) \
                 VALUES ('{app_id}', 'user', '{identity}', {target_id}, '{state}', '{AT}', '{AT}')"
            ))
            .await
            .expect("a link");
    }
    app.db
        .execute_unprepared("DELETE FROM job")
        .await
        .expect("no job queued");

    let report = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["counts"]["drifted"], 1, "{report}");
    assert_eq!(report["counts"]["missing"], 2, "{report}");
    let link = |identity: &str| {
        let app = &app;
        let identity = identity.to_owned();
        async move {
            app.rows(&format!(
                "SELECT target_id, state FROM link WHERE resource_kind = 'user' AND resource_id = '{identity}'"
            ))
            .await
            .pop()
            .unwrap_or_default()
        }
    };
    assert_eq!(link(&mv1).await["target_id"], json!(id_named("mv1-new")));
    assert_eq!(link(&mv2).await["target_id"], json!(id_named("mv2-new")));
    assert_eq!(
        link(&mv3).await,
        json!({"target_id": null, "state": "pending"}),
        "the unsure create's mark stays"
    );
    let jobs = app
        .rows("SELECT resource_id FROM job WHERE resource_kind = 'user'")
        .await;
    assert_eq!(
        jobs,
        [json!({"resource_id": mv3})],
        "only MV3's fix: {jobs:?}"
    );
}

#[tokio::test]
async fn two_accounts_matching_an_unlinked_person_are_both_conflicts_and_neither_is_linked() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let app_id = provisioned(&app, &target, &["D2"]).await;
    // The person's link is lost (e.g. restored from an old backup): two accounts match them.
    use sea_orm::ConnectionTrait as _;
    app.db
        .execute_unprepared("DELETE FROM link")
        .await
        .expect("drop the link");
    let twin = duplicate(&target, "d2");
    let report = app.reconcile_run(&app_id, json!({})).await;
    settled(&app).await;
    assert_eq!(report["state"], "completed", "{report}");
    let classes: Vec<&Value> = report["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| &i["class"])
        .collect();
    assert_eq!(classes, vec!["conflict", "conflict"], "{report}");
    assert_eq!(report["counts"]["conflict"], 2, "{report}");
    assert_eq!(report["counts"]["adoptable"], 0, "{report}");
    assert_eq!(report["writes"], 0, "{report}");
    assert_eq!(user_links(&app).await, Vec::<Value>::new(), "{report}");
    assert!(!twin.is_empty());
}

/// Issue 20 A5: a held run's deprovisions, approved later, act on what the target and roster
/// hold then, not on what the run saw.
#[tokio::test]
async fn an_approved_deprovision_reads_the_account_again_and_skips_what_changed_meanwhile() {
    use roster::dev_target::Kind;
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    let app_id = holding_app(&app, "crm", &target.base_url(), true).await;
    hand.create("ghost@example.com").await;
    hand.create("stale@example.com").await;
    let held = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(held["state"], "awaiting_approval", "{held}");
    let id_named = |name: &str| account_id_named(&target, name);
    let (ghost, stale) = (id_named("ghost@example.com"), id_named("stale@example.com"));

    // Meanwhile: a new hire with the ghost's address is linked to that account, and the other
    // account was moved to a partner's domain by hand.
    app.post_event(&joiner(
        "a5-hire",
        "E5",
        AT,
        json!({"user_name": "ghost@example.com", "email": "ghost@example.com"}),
    ))
    .await;
    eventually("the new hire linked to the ghost's account", || async {
        settled(&app).await;
        let links = user_links(&app).await;
        links
            .iter()
            .any(|l| l["target_id"] == json!(ghost))
            .then_some(())
    })
    .await;
    assert!(target.edit(Kind::User, &stale, |u| {
        u["userName"] = json!("stale@partner.org");
    }));

    approve(&app, &held).await;
    settled(&app).await;
    for id in [&ghost, &stale] {
        let account = target
            .users_snapshot()
            .into_iter()
            .find(|u| id_of(u) == *id)
            .unwrap_or_default();
        assert_eq!(
            account["active"],
            json!(true),
            "not deprovisioned: {account}"
        );
    }
    let jobs = app
        .rows("SELECT resource_id, state, last_error FROM job WHERE resource_kind = 'account' ORDER BY resource_id")
        .await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job["state"], "dead", "{jobs:?}");
        let error = job["last_error"].as_str().unwrap_or_default();
        let want = if job["resource_id"] == json!(ghost) {
            "is linked to identity"
        } else {
            "outside the app's managed domains"
        };
        assert!(error.contains(want), "{jobs:?}");
    }
    let logged = app
        .rows("SELECT method, error FROM operation WHERE resource_kind = 'account'")
        .await;
    assert_eq!(logged.len(), 2, "only the reads: {logged:?}");
    assert!(
        logged.iter().all(|row| row["method"] == "GET"
            && row["error"].as_str().is_some_and(|e| e.contains("skipped"))),
        "{logged:?}"
    );
}

/// A held run's unmatched deprovisions, approved later, are checked against roster as it is
/// then: an account that matches a person since (here one the app does not assign, so no
/// job of theirs links it meanwhile) is not closed, and none is when the app has turned
/// `deprovision_unmatched` off meanwhile.
#[tokio::test]
async fn an_approved_unmatched_deprovision_skips_accounts_that_match_someone_now() {
    let app = spawn_app().await;
    // Nobody is assigned: Dana's own job never links her account, so whether it ran before
    // the approved deprovision or not, only the check of who matches the account now stands
    // between the deprovision and her account.
    app.post(
        "/api/v1/groups",
        &json!({"name": "nobody-yet", "members": []}),
    )
    .await
    .expect(201);
    for switched_off in [false, true] {
        let target = dev_target(TOKEN).await;
        let hand = Target::by_hand(&target);
        let app_id = holding_app(
            &app,
            &format!("unmatched-{switched_off}"),
            &target.base_url(),
            true,
        )
        .await;
        app.patch(
            &format!("/api/v1/apps/{app_id}"),
            &json!({"scope": {"email_domains": ["example.com"], "groups": ["nobody-yet"]}}),
        )
        .await
        .expect(200);
        let dana = format!("dana-{switched_off}@example.com");
        hand.create(&format!("ghost-{switched_off}@example.com"))
            .await;
        hand.create(&dana).await;
        let held = app.reconcile_run(&app_id, json!({})).await;
        assert_eq!(held["state"], "awaiting_approval", "{held}");
        assert_eq!(held["counts"]["unmatched"], 2, "{held}");
        app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
            .await
            .expect(200);
        if switched_off {
            app.patch(
                &format!("/api/v1/apps/{app_id}"),
                &json!({"reconcile": {"interval_minutes": 0, "mode": "fix", "deprovision_unmatched": false}}),
            )
            .await
            .expect(200);
        } else {
            // Dana joins (not assigned to the app: her job links nothing).
            app.post_event(&joiner(
                "dana-in",
                "DANA",
                AT,
                json!({"user_name": dana, "email": dana}),
            ))
            .await;
        }
        approve(&app, &held).await;
        app.post(&format!("/api/v1/apps/{app_id}/resume"), &json!({}))
            .await
            .expect(200);
        settled(&app).await;
        // The held run's two accounts (the second app also provisions the first's Dana).
        let ghost = format!("ghost-{switched_off}@example.com");
        let active: Vec<bool> = target
            .users_snapshot()
            .iter()
            .filter(|u| u["userName"] == json!(ghost) || u["userName"] == json!(dana))
            .map(|u| u["active"] != json!(false))
            .collect();
        let jobs = app
            .rows(&format!(
                "SELECT state, last_error FROM job WHERE app_id = '{app_id}' AND resource_kind = 'account'"
            ))
            .await;
        let skipped: Vec<&str> = jobs
            .iter()
            .filter(|j| j["state"] == "dead")
            .filter_map(|j| j["last_error"].as_str())
            .collect();
        if switched_off {
            assert_eq!(active, [true, true], "nothing closed: {jobs:?}");
            assert_eq!(skipped.len(), 2, "{jobs:?}");
            assert!(skipped.iter().all(|e| e.contains("off now")), "{jobs:?}");
        } else {
            let dana_active = target
                .users_snapshot()
                .iter()
                .any(|u| u["userName"] == json!(dana) && u["active"] != json!(false));
            assert!(dana_active, "Dana's account kept: {jobs:?}");
            assert_eq!(
                active.iter().filter(|a| !**a).count(),
                1,
                "the ghost closed"
            );
            assert_eq!(skipped.len(), 1, "{jobs:?}");
            assert!(skipped[0].contains("matches employee DANA"), "{jobs:?}");
        }
    }
}

/// A held run's orphan deprovisions (accounts of people who left, never linked by roster),
/// approved later, act on each account as it is then: one moved to a partner's domain, or
/// handed by hand to someone else (renamed to their address), stays active, its job dead with
/// the reason; one a new hire with the leaver's address was linked to meanwhile stays the new
/// hire's, and the approval still applies the rest.
#[tokio::test]
async fn an_approved_orphan_deprovision_reads_the_account_again() {
    use roster::dev_target::Kind;
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let hand = Target::by_hand(&target);
    // Four people who left before the app was registered: roster never linked their accounts.
    let left = ["oa", "ob", "oc", "od"];
    for p in left {
        let employee = p.to_uppercase();
        let address = format!("{p}@example.com");
        app.post_event(&joiner(
            &format!("{p}-in"),
            &employee,
            AT,
            json!({"user_name": address, "email": address}),
        ))
        .await;
        app.post_event(&event(
            &format!("{p}-out"),
            "leaver",
            &employee,
            LATER,
            json!({}),
        ))
        .await;
        hand.create(&format!("{p}@example.com")).await;
    }
    let app_id = holding_app(&app, "orphans", &target.base_url(), false).await;
    let held = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(held["state"], "awaiting_approval", "{held}");
    assert_eq!(held["counts"]["orphan"], 4, "{held}");
    let id_named = |name: &str| account_id_named(&target, name);
    let ids: Vec<String> = left
        .iter()
        .map(|p| id_named(&format!("{p}@example.com")))
        .collect();

    // Meanwhile: ob's account moved to a partner's domain, oc's handed to a colleague by hand,
    // and a new hire given od's address was linked to od's account.
    assert!(target.edit(Kind::User, &ids[1], |u| {
        u["userName"] = json!("ob@partner.org");
    }));
    assert!(target.edit(Kind::User, &ids[2], |u| {
        u["userName"] = json!("colleague@example.com");
    }));
    app.post_event(&joiner(
        "od-hire",
        "NEW-D",
        LATER,
        json!({"user_name": "od@example.com", "email": "od@example.com"}),
    ))
    .await;
    eventually("the new hire linked to od's account", || async {
        settled(&app).await;
        let links = user_links(&app).await;
        links
            .iter()
            .any(|l| l["target_id"] == json!(ids[3]))
            .then_some(())
    })
    .await;

    approve(&app, &held).await;
    settled(&app).await;
    let active = |id: &str| target.user(id).map(|u| u["active"].clone());
    assert_eq!(active(&ids[0]), Some(json!(false)), "oa's account closed");
    for id in &ids[1..] {
        assert_eq!(active(id), Some(json!(true)), "{id} not deprovisioned");
    }
    let linked_to_hire = user_links(&app)
        .await
        .into_iter()
        .filter(|l| l["target_id"] == json!(ids[3]))
        .count();
    assert_eq!(linked_to_hire, 1, "od's account stays the new hire's alone");
    let dead = app
        .rows("SELECT last_error FROM job WHERE state = 'dead' ORDER BY id")
        .await;
    let errors: Vec<&str> = dead
        .iter()
        .filter_map(|j| j["last_error"].as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("outside the app's managed domains")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no longer holds this person's")),
        "{errors:?}"
    );
}

/// The same for orphans roster linked itself: leavers whose deactivated accounts were
/// reactivated by hand. The run is held; meanwhile one account moves to a partner's domain.
/// The approval reads each account again before it deprovisions through the link: the moved
/// one stays active, the other is closed.
#[tokio::test]
async fn an_approved_deprovision_of_a_linked_orphan_reads_the_account_again() {
    use roster::dev_target::Kind;
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let app_id = holding_app(&app, "linked-orphans", &target.base_url(), false).await;
    let left = ["la", "lb"];
    for p in left {
        let employee = p.to_uppercase();
        let address = format!("{p}@example.com");
        app.post_event(&joiner(
            &format!("{p}-in"),
            &employee,
            AT,
            json!({"user_name": address, "email": address}),
        ))
        .await;
    }
    settled(&app).await;
    for p in left {
        let employee = p.to_uppercase();
        app.post_event(&event(
            &format!("{p}-out"),
            "leaver",
            &employee,
            LATER,
            json!({}),
        ))
        .await;
    }
    settled(&app).await;
    assert_eq!(deactivated_links(&app).await, 2);
    let id_named = |name: &str| account_id_named(&target, name);
    let ids: Vec<String> = left
        .iter()
        .map(|p| id_named(&format!("{p}@example.com")))
        .collect();
    for id in &ids {
        assert!(target.edit(Kind::User, id, |u| u["active"] = json!(true)));
    }
    let held = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(held["state"], "awaiting_approval", "{held}");
    assert_eq!(held["counts"]["orphan"], 2, "{held}");
    assert!(target.edit(Kind::User, &ids[1], |u| {
        u["userName"] = json!("lb@partner.org");
    }));
    approve(&app, &held).await;
    settled(&app).await;
    let active = |id: &str| target.user(id).map(|u| u["active"].clone());
    assert_eq!(active(&ids[0]), Some(json!(false)), "la's account closed");
    assert_eq!(
        active(&ids[1]),
        Some(json!(true)),
        "the partner's account kept"
    );
    let dead = app
        .rows(&format!(
            "SELECT last_error FROM job WHERE app_id = '{app_id}' AND state = 'dead'"
        ))
        .await;
    assert!(
        dead.iter().any(|j| j["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("outside the app's managed domains"))),
        "{dead:?}"
    );
}

/// Two target groups carry a pushed group's name and neither is linked: which one is roster's
/// would be a guess. Delivery refuses to pick one, and a fix run adopts neither: no link, and
/// neither group is written to.
#[tokio::test]
async fn two_target_groups_with_a_pushed_group_s_name_are_neither_adopted() {
    use roster::dev_target::Kind;
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    // The dev-target keeps group names unique; many targets do not: the second is renamed.
    for name in ["twins", "twin-2"] {
        let group = target
            .insert(
                Kind::Group,
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                       "displayName": name}),
            )
            .expect("a target group");
        assert!(target.edit(Kind::Group, &id_of(&group), |g| {
            g["displayName"] = json!("twins");
        }));
    }
    let before = target.groups_snapshot();
    app.post("/api/v1/groups", &json!({"name": "twins", "members": []}))
        .await
        .expect(201);
    let app_id = app_on(
        &app,
        "twins",
        &target.base_url(),
        json!({"group_push": ["twins"], "reconcile": {"interval_minutes": 0, "mode": "fix"}}),
    )
    .await;
    settled(&app).await;
    let run = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(run["state"], "completed", "{run}");
    settled(&app).await;
    let linked = app
        .rows("SELECT target_id FROM link WHERE resource_kind = 'group' AND target_id IS NOT NULL")
        .await;
    assert!(linked.is_empty(), "{linked:?} {run}");
    assert_eq!(target.groups_snapshot(), before, "neither group written to");
}

/// Issue 20 D17: deleting a roster group deletes the target group only if roster created it;
/// one roster adopted (the app had it before) stays, and only its link goes.
#[tokio::test]
async fn deleting_a_roster_group_never_deletes_a_target_group_roster_adopted() {
    use roster::dev_target::Kind;
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    target
        .insert(
            Kind::Group,
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "board"}),
        )
        .expect("the app's own group");
    let mut ids = Vec::new();
    for name in ["board", "team"] {
        let created = app
            .post("/api/v1/groups", &json!({"name": name, "members": ["B1"]}))
            .await
            .expect(201);
        ids.push(created["id"].as_str().unwrap_or_default().to_owned());
    }
    app.create_app(&app_body(
        "wiki",
        json!({
            "base_url": target.base_url(),
            "auth": {"type": "bearer", "token": TOKEN},
            "group_push": ["board", "team"],
            "max_concurrency": 1,
        }),
    ))
    .await;
    app.post_event(&joiner("d17-1", "B1", AT, json!({}))).await;
    let names = || {
        let mut names: Vec<String> = target
            .groups_snapshot()
            .iter()
            .filter_map(|g| g["displayName"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    eventually("both groups pushed with their member", || async {
        settled(&app).await;
        let full = target
            .groups_snapshot()
            .iter()
            .filter(|g| g["members"].as_array().is_some_and(|m| m.len() == 1))
            .count();
        (full == 2).then_some(())
    })
    .await;
    assert_eq!(
        names(),
        vec!["board", "team"],
        "board adopted, not created twice"
    );

    for id in &ids {
        app.delete(&format!("/api/v1/groups/{id}")).await;
    }
    settled(&app).await;
    assert_eq!(
        names(),
        vec!["board"],
        "the group roster created is deleted, the adopted one stays"
    );
    let links = app
        .rows("SELECT resource_id FROM link WHERE resource_kind = 'group'")
        .await;
    assert_eq!(links, Vec::<Value>::new(), "both links are gone");
}

/// Issue 20 D17: a scope group deleted at once takes every member out of the app's scope.
/// With the deletion guard on the event path, that mass deprovisioning is held like a
/// reconcile fix over the limits: the app is paused with the reason once the limit is reached.
#[tokio::test]
async fn deleting_a_scope_group_is_held_by_the_deletion_guard() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let members: Vec<String> = (0..5).map(|n| format!("SG{n}")).collect();
    let group = app
        .post(
            "/api/v1/groups",
            &json!({"name": "staff", "members": members}),
        )
        .await
        .expect(201);
    let app_id = app_on(
        &app,
        "crm",
        &target.base_url(),
        json!({
            "scope": {"groups": ["staff"], "email_domains": ["example.com"]},
            "max_concurrency": 1,
            "deletion_guard": {"max_fraction": 1.0, "max_count": 2, "on_events": true},
        }),
    )
    .await;
    for who in &members {
        app.post_event(&joiner(&format!("sg-{who}"), who, AT, json!({})))
            .await;
    }
    eventually("five accounts", || async {
        settled(&app).await;
        (target.users_snapshot().len() == 5).then_some(())
    })
    .await;

    let group_id = group["id"].as_str().unwrap_or_default();
    app.delete(&format!("/api/v1/groups/{group_id}")).await;
    let state = eventually("the app paused by the guard", || async {
        let apps = app
            .rows(&format!("SELECT state FROM app WHERE id = '{app_id}'"))
            .await;
        let state = apps.first().map(|a| a["state"].clone()).unwrap_or_default();
        (state == "paused").then_some(state)
    })
    .await;
    assert_eq!(state, "paused");
    let inactive = target
        .users_snapshot()
        .iter()
        .filter(|u| u["active"] == json!(false))
        .count();
    assert!(
        inactive <= 2,
        "at most max_count deprovisions pass: {inactive}"
    );
}

/// Issue 20 A4 for groups: a pushed group the listing did not show (a target that ignores
/// `startIndex` answers page 1 again) is read by id, not called missing and re-linked.
#[tokio::test]
async fn a_pushed_group_the_listing_missed_is_confirmed_by_id() {
    let target = dev_target(TOKEN).await;
    let stub = misbehaving(&target.base_url(), Misbehaviour::IgnoresStartIndex).await;
    let app = spawn_app().await;
    let names = ["ga", "gb", "gc"];
    for name in names {
        app.post("/api/v1/groups", &json!({"name": name, "members": ["P1"]}))
            .await
            .expect(201);
    }
    let app_id = app_on(
        &app,
        "wiki",
        &stub,
        json!({
            "group_push": names,
            "quirks": {"page_size": 2},
            "max_concurrency": 1,
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
        }),
    )
    .await;
    app.post_event(&joiner("pg-1", "P1", AT, json!({}))).await;
    eventually("three pushed groups with their member", || async {
        settled(&app).await;
        let full = target
            .groups_snapshot()
            .iter()
            .filter(|g| g["members"].as_array().is_some_and(|m| m.len() == 1))
            .count();
        (full == 3).then_some(())
    })
    .await;
    let links = app
        .rows("SELECT resource_id, target_id FROM link WHERE resource_kind = 'group' ORDER BY resource_id")
        .await;
    let mark = last_call(&app).await;
    let report = app.reconcile_run(&app_id, json!({})).await;
    settled(&app).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(group_counts(&report), [3, 0, 0, 0], "{report}");
    assert_eq!(report["writes"], 0, "{report}");
    assert_eq!(
        calls_after(&app, mark).await,
        Vec::<Value>::new(),
        "{report}"
    );
    assert_eq!(
        app.rows("SELECT resource_id, target_id FROM link WHERE resource_kind = 'group' ORDER BY resource_id")
            .await,
        links
    );
}

/// A run awaiting approval, written straight to the store: `items` deactivations of accounts
/// `t{i}` for identities `i{i}`, on a paused app so that the jobs an approval enqueues stay in
/// the queue to be counted.
async fn held_run(app: &TestApp, items: u32) -> (String, String) {
    use sea_orm::ConnectionTrait;
    let app_id = app.create_app(&app_body("held", json!({}))).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    let pg = app.db.get_database_backend() == sea_orm::DbBackend::Postgres;
    let (empty_object, empty_list) = if pg {
        ("'{}'::jsonb", "'[]'::jsonb")
    } else {
        ("'{}'", "'[]'")
    };
    let run_id = uuid::Uuid::new_v4().to_string();
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO reconcile_run (id, app_id, state, dry_run, mode, counts, writes, started_at) \
             VALUES ('{run_id}', '{app_id}', 'awaiting_approval', false, 'fix', {empty_object}, 0, \
                     '2026-12-01T00:00:00+00:00')"
        ))
        .await
        .expect("a held run");
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO reconcile_item \
               (run_id, class, target_id, user_name, identity_id, differences, action, held, resource) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {items}) \
             SELECT '{run_id}', 'orphan', 't' || i, 'u' || i || '@example.com', \
                    'i' || i, {empty_list}, \
                    'deactivate', true, 'user' FROM n"
        ))
        .await
        .expect("its items");
    (app_id, run_id)
}

/// Two approvals of one held run at once: one enqueues the held deprovisions and completes
/// the run, the other is a 409 that changed nothing — no job enqueued or touched twice, one
/// audit row.
#[tokio::test]
async fn two_approvals_of_one_run_at_once_apply_it_once() {
    let app = spawn_app().await;
    let (app_id, run_id) = held_run(&app, 40).await;
    let url = format!("/api/v1/reconcile-runs/{run_id}/approve");
    let empty = json!({});
    let (a, b) = tokio::join!(app.post(&url, &empty), app.post(&url, &empty));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    let approved = if a.status == 200 { a.body } else { b.body };
    assert_eq!(approved["jobs_enqueued"], 40);
    let jobs = app
        .rows(&format!("SELECT id FROM job WHERE app_id = '{app_id}'"))
        .await;
    assert_eq!(jobs.len(), 40);
    let touched = app
        .rows(&format!(
            "SELECT id FROM job WHERE app_id = '{app_id}' AND updated_at <> created_at"
        ))
        .await;
    assert!(touched.is_empty(), "jobs enqueued twice: {touched:?}");
    let audit = app
        .rows("SELECT id FROM audit WHERE action = 'reconcile.approve'")
        .await;
    assert_eq!(audit.len(), 1);
    let report = app
        .get(&format!("/api/v1/reconcile-runs/{run_id}"))
        .await
        .expect(200);
    assert_eq!(report["state"], "completed");
    assert_eq!(report["writes"], 40);
}

/// An approval that fails part-way leaves nothing behind: no job enqueued, no link changed,
/// the run still awaiting approval (and approvable once the fault is gone). The fault: the
/// store refuses the approval's audit row, the last thing it writes.
#[tokio::test]
async fn an_approval_that_fails_part_way_enqueues_nothing() {
    use sea_orm::ConnectionTrait;
    let app = spawn_app().await;
    let (app_id, run_id) = held_run(&app, 40).await;
    let pg = app.db.get_database_backend() == sea_orm::DbBackend::Postgres;
    let triggers: &[&str] = if pg {
        &[
            "CREATE FUNCTION refuse_approval() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
            "CREATE TRIGGER refuse_approval BEFORE INSERT ON audit FOR EACH ROW \
             WHEN (NEW.action = 'reconcile.approve') EXECUTE FUNCTION refuse_approval()",
        ]
    } else {
        &["CREATE TRIGGER refuse_approval BEFORE INSERT ON audit \
           WHEN NEW.action = 'reconcile.approve' \
           BEGIN SELECT RAISE(ABORT, 'injected failure'); END"]
    };
    for sql in triggers {
        app.db.execute_unprepared(sql).await.expect("a trigger");
    }
    let url = format!("/api/v1/reconcile-runs/{run_id}/approve");
    let failed = app.post(&url, &json!({})).await;
    assert_eq!(failed.status, 500, "{}", failed.text);
    let jobs = app
        .rows(&format!("SELECT id FROM job WHERE app_id = '{app_id}'"))
        .await;
    assert!(
        jobs.is_empty(),
        "{} jobs enqueued by a failed approval",
        jobs.len()
    );
    assert_eq!(app.count("link").await, 0);
    let report = app
        .get(&format!("/api/v1/reconcile-runs/{run_id}"))
        .await
        .expect(200);
    assert_eq!(report["state"], "awaiting_approval");

    let drop = if pg {
        "DROP TRIGGER refuse_approval ON audit"
    } else {
        "DROP TRIGGER refuse_approval"
    };
    app.db
        .execute_unprepared(drop)
        .await
        .expect("drop the trigger");
    let approved = app.post(&url, &json!({})).await.expect(200);
    assert_eq!(approved["jobs_enqueued"], 40);
}

/// `roster_reconcile_last_success_timestamp_seconds{app}` as `/metrics` shows it.
async fn last_success(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.request("GET", "/metrics", None, None).await.text;
    let series = format!("roster_reconcile_last_success_timestamp_seconds{{app=\"{name}\"}}");
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The freshness alert reads `roster_reconcile_last_success_timestamp_seconds`: a successful
/// run sets it, a failed run (the target gone) leaves it where it was.
#[tokio::test]
async fn reconcile_freshness_moves_on_success_and_stays_on_failure() {
    let target = dev_target(TOKEN).await;
    let app = spawn_app().await;
    let app_id = app_on(
        &app,
        "cov-fresh",
        &target.base_url(),
        json!({
            "reconcile": {"interval_minutes": 0, "mode": "fix"},
        }),
    )
    .await;
    app.post_event(&joiner("fresh-1", "F1", AT, json!({})))
        .await;
    settled(&app).await;
    assert_eq!(last_success(&app, "cov-fresh").await, None, "no run yet");
    let before = chrono::Utc::now().timestamp() as f64;
    let report = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(report["state"], "completed", "{report}");
    let stamp = last_success(&app, "cov-fresh").await;
    assert!(
        stamp.is_some_and(|s| s >= before - 1.0),
        "set by the run: {stamp:?}"
    );
    // The target goes away: the next run fails and the freshness stays at the last success.
    target.shutdown().await.expect("stop the target");
    let report = app.reconcile_run(&app_id, json!({})).await;
    assert_eq!(report["state"], "failed", "{report}");
    assert_eq!(last_success(&app, "cov-fresh").await, stamp, "not moved");
}

/// Follows `next_cursor` from `first` (a URL with `limit`) to the end; returns every page's
/// items. Stops after 50 pages so a cursor that never ends fails instead of looping.
async fn all_pages(app: &TestApp, first: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut url = first.to_owned();
    for _ in 0..50 {
        let page = app.get(&url).await.expect(200);
        pages.push(page["items"].as_array().cloned().unwrap_or_default());
        match &page["next_cursor"] {
            Value::Null => return pages,
            Value::String(c) => url = format!("{first}&cursor={c}"),
            other => url = format!("{first}&cursor={other}"),
        }
    }
    panic!("{first}: more than 50 pages");
}

#[tokio::test]
async fn runs_and_run_items_page_with_cursors_without_overlap_or_gap() {
    use roster::store::entity::{reconcile_item, reconcile_run};
    use sea_orm::{ActiveModelTrait as _, Set};
    let app = spawn_app().await;
    // Never scheduled: a run of its own, started now, would be the newest.
    let never = json!({"reconcile": {"interval_minutes": 0}});
    let app_id = app.create_app(&app_body("paged", never)).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let base = chrono::DateTime::parse_from_rfc3339(AT)
        .expect("a time")
        .with_timezone(&chrono::Utc);
    // Seven runs, four of them started at the same instant: the cursor must order the tie by
    // id, or a page boundary inside it repeats or skips runs.
    for n in 0..7_i64 {
        reconcile_run::ActiveModel {
            id: Set(format!("run-{n:02}")),
            app_id: Set(app_id.clone()),
            state: Set("completed".into()),
            dry_run: Set(true),
            mode: Set("report".into()),
            counts: Set(json!({})),
            writes: Set(0),
            error: Set(None),
            started_at: Set(base + chrono::Duration::minutes(if n < 4 { 0 } else { n })),
            finished_at: Set(None),
            waiting: Set(false),
        }
        .insert(&app.db)
        .await
        .expect("a run");
    }
    let want: Vec<String> = [
        "run-06", "run-05", "run-04", "run-03", "run-02", "run-01", "run-00",
    ]
    .map(str::to_owned)
    .to_vec();
    for limit in [1, 2, 3, 7, 100] {
        let pages = all_pages(
            &app,
            &format!("/api/v1/reconcile-runs?app={app_id}&limit={limit}"),
        )
        .await;
        assert!(pages.iter().all(|p| p.len() <= limit), "limit {limit}");
        let got: Vec<String> = pages
            .iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(got, want, "limit {limit}: every run once, newest first");
    }
    let unknown = app.get("/api/v1/reconcile-runs?cursor=no-such-run").await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);

    // A run's items, in the order found, a page at a time.
    for n in 0..25 {
        reconcile_item::ActiveModel {
            run_id: Set("run-06".into()),
            class: Set("unmatched".into()),
            target_id: Set(Some(format!("t-{n}"))),
            user_name: Set(Some(format!("user-{n:02}"))),
            identity_id: Set(None),
            differences: Set(json!([])),
            action: Set("none".into()),
            held: Set(n % 2 == 0),
            resource: Set("user".into()),
            display_name: Set(None),
            account: Set(None),
            ..Default::default()
        }
        .insert(&app.db)
        .await
        .expect("an item");
    }
    let want: Vec<String> = (0..25).map(|n| format!("user-{n:02}")).collect();
    for limit in [1, 4, 5, 25, 1000] {
        let pages = all_pages(
            &app,
            &format!("/api/v1/reconcile-runs/run-06?limit={limit}"),
        )
        .await;
        assert!(pages.iter().all(|p| p.len() <= limit), "limit {limit}");
        let items: Vec<&Value> = pages.iter().flatten().collect();
        let got: Vec<String> = items
            .iter()
            .filter_map(|i| i["user_name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            got, want,
            "limit {limit}: every item once, in the order found"
        );
        assert!(
            items.iter().all(|i| i["held"]
                == json!(i["target_id"].as_str().is_some_and(|t| {
                    t.trim_start_matches("t-")
                        .parse::<u32>()
                        .is_ok_and(|n| n % 2 == 0)
                }))),
            "held stays with its item"
        );
    }
    // Without a cursor the report still starts at the first item and counts them all.
    let first = app
        .get("/api/v1/reconcile-runs/run-06?limit=10")
        .await
        .expect(200);
    assert_eq!(first["total_items"], 25);
    assert_eq!(first["items"][0]["user_name"], "user-00");
}

/// In front of the dev-target: listings lose their `totalResults` while `strip` is set.
#[derive(Default)]
struct StripTotal {
    strip: std::sync::atomic::AtomicBool,
}

impl Tap for StripTotal {
    fn answer(&self, call: &RelayedCall, body: &mut Vec<u8>) {
        if !(Misbehaviour::listing(call) && self.strip.load(std::sync::atomic::Ordering::SeqCst)) {
            return;
        }
        if let Ok(mut page) = serde_json::from_slice::<Value>(body)
            && let Some(object) = page.as_object_mut()
        {
            object.remove("totalResults");
            *body = serde_json::to_vec(&page).unwrap_or_default();
        }
    }
}

#[tokio::test]
async fn a_listing_that_cannot_be_proven_complete_never_deprovisions_or_creates() {
    // `paging: none`: one answer is the whole listing, and only its totalResults proves it.
    listing_without_total_acts_on_nothing("no-paging", json!({"paging": "none"})).await;
    // Index paging: a short page without totalResults may be a page the target cut below the
    // count asked (its own cap), not the last one.
    listing_without_total_acts_on_nothing("index-paging", json!({"paging": "index"})).await;
}

async fn listing_without_total_acts_on_nothing(name: &str, quirks: Value) {
    let target = dev_target(TOKEN).await;
    let tap = std::sync::Arc::new(StripTotal::default());
    let stub = relay(&target.base_url(), tap.clone()).await;
    let hand = Target::by_hand(&target);
    let app = spawn_app().await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "np-team", "members": ["NP0"]}),
    )
    .await
    .expect(201);
    let app_id = app_on(
        &app,
        name,
        &stub,
        json!({
            "quirks": quirks,
            "group_push": ["np-team"],
            "reconcile": {"interval_minutes": 0, "mode": "fix", "deprovision_unmatched": true},
        }),
    )
    .await;
    for n in 0..2 {
        app.post_event(&joiner(
            &format!("np-{n}"),
            &format!("NP{n}"),
            AT,
            json!({}),
        ))
        .await;
    }
    let accounts = eventually("two accounts", || async {
        settled(&app).await;
        let users = target.users_snapshot();
        (users.len() == 2).then_some(users)
    })
    .await;
    let team = eventually("the pushed group", || async {
        settled(&app).await;
        target.groups_snapshot().first().cloned()
    })
    .await;
    hand.delete(&id_of(&accounts[1])).await;
    hand.create("ghost@example.com").await;
    hand.delete_group(&id_of(&team)).await;
    tap.strip.store(true, std::sync::atomic::Ordering::SeqCst);

    let report = app.reconcile_run(&app_id, json!({})).await;
    settled(&app).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["counts"]["missing"], 1, "{report}");
    assert_eq!(report["counts"]["unmatched"], 1, "{report}");
    assert_eq!(report["writes"], 0, "only reported: {report}");
    assert_eq!(
        item(&report, "ghost@example.com")["action"],
        "none",
        "{report}"
    );
    assert_eq!(report["groups"]["missing"], 1, "{report}");
    assert_eq!(group_item(&report, "np-team")["action"], "none", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot be proven complete"), "{report}");
    let users = target.users_snapshot();
    assert_eq!(users.len(), 2, "nobody created: {users:?}");
    assert!(target.groups_snapshot().is_empty(), "no group created");
    assert!(
        users.iter().all(|u| u["active"] != json!(false)),
        "nobody deprovisioned: {users:?}"
    );

    // The same listing with its totalResults is proof: the same run acts.
    tap.strip.store(false, std::sync::atomic::Ordering::SeqCst);
    let report = app.reconcile_run(&app_id, json!({})).await;
    settled(&app).await;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(
        report["writes"], 3,
        "deactivate the ghost, create the missing account and group: {report}"
    );
    assert!(report["error"].is_null(), "{report}");
    let ghost = target
        .users_snapshot()
        .into_iter()
        .find(|u| u["userName"] == "ghost@example.com");
    assert!(ghost.is_some_and(|g| g["active"] == json!(false)));
    assert_eq!(target.users_snapshot().len(), 3);
    assert_eq!(target.groups_snapshot().len(), 1);
}

/// A relay's tap for the reconcile-slot tests: calls pass while the gate is open and wait while
/// it is shut; every call's arrival and answer is logged, in one order across the relays that
/// share the log, under the relay's number.
struct Turns {
    relay: usize,
    gate: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    log: std::sync::Arc<std::sync::Mutex<Vec<(usize, Event)>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Arrived,
    Answered,
}

impl Tap for Turns {
    async fn request(&self, _call: &mut RelayedCall) {
        self.log
            .lock()
            .expect("log")
            .push((self.relay, Event::Arrived));
        let mut open = self.gate.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }

    fn answer(&self, _call: &RelayedCall, _body: &mut Vec<u8>) {
        self.log
            .lock()
            .expect("log")
            .push((self.relay, Event::Answered));
    }
}

/// `n` dev-targets behind relays sharing one gate (open) and one log; target `i` holds `i + 1`
/// accounts of nobody (`unmatched`). Returns the relays' base URLs, the targets, the gate and
/// the log.
#[allow(clippy::type_complexity)]
async fn gated_targets(
    n: usize,
) -> (
    Vec<String>,
    Vec<roster::dev_target::DevTarget>,
    std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    std::sync::Arc<std::sync::Mutex<Vec<(usize, Event)>>>,
) {
    let gate = std::sync::Arc::new(tokio::sync::watch::channel(true).0);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (mut urls, mut targets) = (Vec::new(), Vec::new());
    for relay_no in 0..n {
        let target = dev_target(TOKEN).await;
        let hand = Target::by_hand(&target);
        for k in 0..=relay_no {
            hand.create(&format!("nobody{k}@example.com")).await;
        }
        let tap = Turns {
            relay: relay_no,
            gate: gate.clone(),
            log: log.clone(),
        };
        urls.push(relay(&target.base_url(), std::sync::Arc::new(tap)).await);
        targets.push(target);
    }
    (urls, targets, gate, log)
}

/// The relays that received a call, per the log.
fn relays_called(log: &std::sync::Mutex<Vec<(usize, Event)>>) -> std::collections::BTreeSet<usize> {
    log.lock()
        .expect("log")
        .iter()
        .map(|(relay, _)| *relay)
        .collect()
}

async fn runs_of(app: &TestApp) -> Vec<Value> {
    app.get("/api/v1/reconcile-runs?limit=100")
        .await
        .expect(200)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// With `ROSTER_RECONCILE_CONCURRENCY` 1, three apps due at once: one run reads its target while
/// the other two wait (their rows `running` and `waiting`, their targets not called), and an
/// on-demand run waits too and still blocks a second start of its app. Once the targets answer,
/// every run completes with exactly what its target holds, one after another: no two targets
/// are ever read at once.
#[tokio::test]
async fn reconcile_runs_beyond_the_concurrency_wait_their_turn() {
    let (urls, _targets, gate, log) = gated_targets(4).await;
    // No scheduler before the restart: one that looked after the backdating below would start
    // the runs there, the restart would interrupt them, and after it none would be due.
    let mut app = crate::helpers::spawn_app_with(|c| {
        c.reconcile_concurrency = 1;
        c.run_engine = false;
    })
    .await;
    let mut apps = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        // Three scheduled apps; the fourth is reconciled on demand only.
        let minutes = if i < 3 { 5 } else { 0 };
        let settings = json!({"reconcile": {"interval_minutes": minutes, "mode": "report"}});
        apps.push(app_on(&app, &format!("turn{i}"), url, settings).await);
    }
    // Due since long ago: the scheduler starts all three at its first look, after the restart.
    app.rows("UPDATE app SET created_at = '2020-01-01T00:00:00+00:00'")
        .await;
    gate.send_replace(false);
    log.lock().expect("log").clear();
    app.config.run_engine = true;
    let app = app.restart().await;

    // One run holds the slot, its first call held at its target; two wait for the slot.
    let waiting = eventually("one run reading and two waiting", || async {
        let runs = runs_of(&app).await;
        let waiting: Vec<Value> = runs
            .iter()
            .filter(|r| r["waiting"] == true)
            .cloned()
            .collect();
        (runs.len() == 3 && waiting.len() == 2 && !relays_called(&log).is_empty())
            .then_some(waiting)
    })
    .await;
    assert!(
        waiting.iter().all(|r| r["state"] == "running"),
        "{waiting:?}"
    );
    assert_eq!(
        relays_called(&log).len(),
        1,
        "{:?}",
        log.lock().expect("log")
    );

    // On demand: accepted, waits as well, and a second start of the app is refused meanwhile.
    let path = format!("/api/v1/apps/{}/reconcile", apps[3]);
    let on_demand = app.post(&path, &json!({})).await.expect(202);
    let on_demand_id = on_demand["id"].as_str().unwrap_or_default().to_owned();
    eventually("the on-demand run to wait", || async {
        let run = app
            .get(&format!("/api/v1/reconcile-runs/{on_demand_id}"))
            .await
            .expect(200);
        (run["waiting"] == true).then_some(())
    })
    .await;
    app.post(&path, &json!({})).await.problem(409);
    assert_eq!(
        relays_called(&log).len(),
        1,
        "{:?}",
        log.lock().expect("log")
    );

    gate.send_replace(true);
    let runs = eventually("every run to finish", || async {
        let runs = runs_of(&app).await;
        (runs.len() == 4 && runs.iter().all(|r| r["state"] != "running")).then_some(runs)
    })
    .await;
    for (i, app_id) in apps.iter().enumerate() {
        let run = runs
            .iter()
            .find(|r| r["app_id"] == json!(app_id))
            .expect("a run of each app");
        assert_eq!(run["state"], "completed", "{run}");
        assert_eq!(run["waiting"], false, "{run}");
        assert_eq!(counts(run), [0, 0, 0, 0, i as u64 + 1, 0, 0], "{run}");
    }
    // Each target's calls, from its first arrival to its last answer, never overlap another's.
    let log = log.lock().expect("log").clone();
    let mut spans: Vec<(usize, usize)> = (0..4)
        .filter_map(|relay_no| {
            let first = log.iter().position(|(r, _)| *r == relay_no)?;
            let last = log.iter().rposition(|(r, _)| *r == relay_no)?;
            Some((first, last))
        })
        .collect();
    assert_eq!(spans.len(), 4, "{log:?}");
    spans.sort_unstable();
    for pair in spans.windows(2) {
        assert!(pair[0].1 < pair[1].0, "two runs read at once: {log:?}");
    }
}

/// A run waiting for a slot when roster stops ends `failed` (interrupted), like a running one.
#[tokio::test]
async fn shutdown_interrupts_a_run_waiting_for_a_slot() {
    let (urls, _targets, gate, log) = gated_targets(2).await;
    let app = crate::helpers::spawn_app_with(|c| c.reconcile_concurrency = 1).await;
    let mut ids = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let settings = json!({"reconcile": {"interval_minutes": 0, "mode": "report"}});
        ids.push(app_on(&app, &format!("stop{i}"), url, settings).await);
    }
    gate.send_replace(false);
    let mut runs = Vec::new();
    for app_id in &ids {
        let started = app
            .post(&format!("/api/v1/apps/{app_id}/reconcile"), &json!({}))
            .await
            .expect(202);
        runs.push(started["id"].as_str().unwrap_or_default().to_owned());
    }
    eventually("one run reading, one waiting", || async {
        let listed = runs_of(&app).await;
        (listed.iter().any(|r| r["waiting"] == true) && !relays_called(&log).is_empty())
            .then_some(())
    })
    .await;
    let app = app.restart().await;
    for id in &runs {
        let run = eventually("the run to end", || async {
            let run = app
                .get(&format!("/api/v1/reconcile-runs/{id}"))
                .await
                .expect(200);
            (run["state"] != "running").then_some(run)
        })
        .await;
        assert_eq!(run["state"], "failed", "{run}");
        assert_eq!(run["waiting"], false, "{run}");
        assert!(
            run["error"]
                .as_str()
                .unwrap_or_default()
                .contains("interrupted"),
            "{run}"
        );
    }
    gate.send_replace(true);
}
