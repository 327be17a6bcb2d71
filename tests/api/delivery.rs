//! The delivery engine end to end: HR events → SCIM calls in the dev-target and in the
//! third-party peer, with faults injected.
use std::time::Duration;

use roster::dev_target::{DevTarget, DevTargetArgs};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, app_body, dev_target, empty_list, event, eventually, joiner, peer, scim_answer,
    scim_client, scim_error, serve_until, spawn_app, spawn_planner, stub_service_provider_config,
};

const TOKEN: &str = "target-token";

/// DESIGN §4's example app, pointed at `base_url`.
fn sherpany(name: &str, base_url: &str, token: &str, extra: Value) -> Value {
    let mut body = app_body(
        name,
        json!({
            "base_url": base_url,
            "auth": {"type": "bearer", "token": token},
            "rate_limit": {"per_second": 50, "burst": 50},
            "max_concurrency": 4,
            "timeout_ms": 5000,
            "mappings": [
                {"target": "userName", "source": "email"},
                {"target": "name.givenName", "source": "given_name"},
                {"target": "name.familyName", "source": "family_name"},
                {"target": "emails[type eq \"work\"].value", "source": "email"},
                {"target": "title", "source": "title"},
                {"target": "externalId", "source": "employee_id"}
            ],
            "role_mapping": {"target": "roles[primary eq true].value", "default": "member",
                             "rules": [{"group": "board-admins", "value": "admin"}]},
        }),
    );
    crate::helpers::merge(&mut body, &extra);
    body
}

async fn target_with(args: DevTargetArgs) -> DevTarget {
    roster::dev_target::spawn(DevTargetArgs {
        token: Some(TOKEN.into()),
        ..args
    })
    .await
    .expect("dev-target")
}

fn user<'a>(users: &'a [Value], user_name: &str) -> Option<&'a Value> {
    users.iter().find(|u| {
        u["userName"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(user_name))
    })
}

/// Reads one user of any SCIM server by userName, through roster's own client.
async fn read_user(base: &str, token: &str, user_name: &str) -> Option<Value> {
    scim_client(base, token)
        .users()
        .find_by("userName", user_name)
        .await
        .ok()?
        .pop()
}

/// Posts `n` joiners in one batch: event ids `{event}{i}`, employee ids `{employee}{i}`.
async fn post_joiners(app: &TestApp, event: &str, employee: &str, n: usize) {
    let batch: Vec<Value> = (0..n)
        .map(|i| {
            joiner(
                &format!("{event}{i}"),
                &format!("{employee}{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": batch}))
        .await
        .expect(202);
}

/// An app with the deletion guard on the event path (`settings` add to or override the
/// example's), holding accounts for `n` joiners `{employee}0..n` delivered and settled.
async fn guarded_app(
    app: &TestApp,
    target: &DevTarget,
    name: &str,
    settings: Value,
    (event, employee, n): (&str, &str, usize),
) -> String {
    let created = app
        .create_app(&sherpany(name, &target.base_url(), TOKEN, settings))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    post_joiners(app, event, employee, n).await;
    eventually(
        &format!("{n} accounts"),
        Duration::from_secs(30),
        || async { (target.stats()["users"] == n).then_some(()) },
    )
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    app_id
}

/// Leaver events for `{employee}0..n`, in one batch.
async fn post_leavers(app: &TestApp, event_prefix: &str, employee: &str, n: usize) {
    let leavers: Vec<Value> = (0..n)
        .map(|i| {
            event(
                &format!("{event_prefix}{i}"),
                "leaver",
                &format!("{employee}{i}"),
                "2026-11-02T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": leavers}))
        .await
        .expect(202);
}

/// Waits until the app is paused and returns its status.
async fn paused_status(app: &TestApp, app_id: &str) -> Value {
    app.get_until(
        "the app paused by the guard",
        &format!("/api/v1/apps/{app_id}/status"),
        Duration::from_secs(30),
        |s| s["state"] == "paused",
    )
    .await
}

async fn identity_id(app: &TestApp, employee_id: &str) -> String {
    app.get(&format!("/api/v1/identities/{employee_id}"))
        .await
        .expect(200)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Joiner → mover → leaver against any SCIM server; `tag` keeps names unique on shared servers.
async fn joiner_mover_leaver(app: &TestApp, base: &str, token: &str, tag: &str) {
    let email = format!("ada.{tag}@example.com");
    let created = app
        .create_app(&sherpany(&format!("s-{tag}"), base, token, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    let emp = format!("E{tag}");
    app.post(
        "/api/v1/groups",
        &json!({"name": "board-admins", "members": [emp]}),
    )
    .await
    .expect(201);
    app.post_event(&joiner(
        &format!("j-{tag}"),
        &emp,
        "2026-11-01T09:00:00Z",
        json!({"email": email, "given_name": "Ada", "family_name": "Lovelace", "title": "Chair"}),
    ))
    .await;
    let u = eventually(
        "the joiner in the target",
        Duration::from_secs(20),
        || async { read_user(base, token, &email).await },
    )
    .await;
    assert_eq!(u["name"]["givenName"], "Ada");
    assert_eq!(u["name"]["familyName"], "Lovelace");
    assert_eq!(u["title"], "Chair");
    assert_eq!(u["externalId"], emp.as_str());
    assert_ne!(u["active"], json!(false));
    let work = u["emails"]
        .as_array()
        .and_then(|e| e.iter().find(|x| x["type"] == "work"))
        .cloned();
    assert_eq!(work.map(|w| w["value"].clone()), Some(json!(email)));
    let role = u["roles"]
        .as_array()
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        role["value"], "admin",
        "role from the board-admins rule: {u}"
    );

    app.post_event(&event(
        &format!("m-{tag}"),
        "mover",
        &emp,
        "2026-11-01T10:00:00Z",
        json!({"title": "Treasurer"}),
    ))
    .await;
    eventually("the mover's title", Duration::from_secs(20), || async {
        let u = read_user(base, token, &email).await?;
        (u["title"] == "Treasurer").then_some(())
    })
    .await;

    app.post_event(&event(
        &format!("l-{tag}"),
        "leaver",
        &emp,
        "2026-11-01T11:00:00Z",
        json!({}),
    ))
    .await;
    eventually(
        "the leaver deactivated",
        Duration::from_secs(20),
        || async {
            let u = read_user(base, token, &email).await?;
            (u["active"] == json!(false)).then_some(())
        },
    )
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let person = app
        .get(&format!("/api/v1/identities/{emp}"))
        .await
        .expect(200);
    let link = &person["links"][0];
    assert_eq!(link["state"], "deactivated", "{person}");
    assert_eq!(link["app_id"], app_id.as_str());
    // The provisioning log has the calls, correlated with the HR events.
    let log = app
        .get(&format!("/api/v1/operations?app={app_id}&identity={emp}"))
        .await
        .expect(200);
    let ops: Vec<&str> = log["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["operation"].as_str())
        .collect();
    for op in ["create", "update", "deactivate"] {
        assert!(ops.contains(&op), "{op} missing from the log: {ops:?}");
    }
    assert!(
        log["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["hr_event_id"] == format!("l-{tag}"))
    );
}

#[tokio::test]
async fn joiner_mover_leaver_reach_the_dev_target() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    joiner_mover_leaver(&app, &target.base_url(), TOKEN, "dev").await;
    // Exactly one account was created.
    assert_eq!(target.stats()["requests"]["POST"], 1, "{}", target.stats());
}

#[tokio::test]
async fn joiner_mover_leaver_reach_the_third_party_peer() {
    let Some((base, token, _turn)) = peer().await else {
        return;
    };
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    joiner_mover_leaver(&app, &base, &token, &tag).await;
}

#[tokio::test]
async fn an_external_domain_user_is_never_created() {
    let app = spawn_app().await;
    let target = dev_target(TOKEN).await;
    let created = app
        .create_app(&sherpany("ext", &target.base_url(), TOKEN, json!({})))
        .await;
    app.post_event(&joiner(
        "x1",
        "X1",
        "2026-11-01T09:00:00Z",
        json!({"email": "guest@partner.org"}),
    ))
    .await;
    app.post_event(&joiner(
        "i1",
        "I1",
        "2026-11-01T09:00:00Z",
        json!({"email": "insider@example.com"}),
    ))
    .await;
    eventually("the insider", Duration::from_secs(20), || async {
        user(&target.users_snapshot(), "insider@example.com").cloned()
    })
    .await;
    app.settled(
        created["id"].as_str().unwrap_or_default(),
        Duration::from_secs(20),
    )
    .await;
    assert!(user(&target.users_snapshot(), "guest@partner.org").is_none());
    assert_eq!(target.stats()["users"], 1);
}

#[tokio::test]
async fn a_pushed_group_follows_roster_membership_with_patches() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "board-room", "members": ["G1", "G2"]}),
    )
    .await
    .expect(201);
    let created = app
        .create_app(&sherpany(
            "push",
            &target.base_url(),
            TOKEN,
            json!({"group_push": ["board-room"]}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    for e in ["G1", "G2", "G3"] {
        app.post_event(&joiner(
            &format!("j{e}"),
            e,
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    let members_of = |target: &DevTarget| target_group_members(target, "board-room");
    eventually(
        "both members in the target group",
        Duration::from_secs(20),
        || async { (members_of(&target)? == ["g1@example.com", "g2@example.com"]).then_some(()) },
    )
    .await;
    let group_id = app.get("/api/v1/groups").await.expect(200)["items"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.patch(
        &format!("/api/v1/groups/{group_id}"),
        &json!({"members": ["G1", "G3"]}),
    )
    .await
    .expect(200);
    eventually("G2 out and G3 in", Duration::from_secs(20), || async {
        (members_of(&target)? == ["g1@example.com", "g3@example.com"]).then_some(())
    })
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let stats = target.stats();
    assert_eq!(
        stats["requests"]["PUT"],
        Value::Null,
        "membership is never PUT: {stats}"
    );
    assert_eq!(target.groups_snapshot().len(), 1);
}

/// The userNames of the members of the dev-target's group `name`, sorted.
fn target_group_members(target: &DevTarget, name: &str) -> Option<Vec<String>> {
    let users = target.users_snapshot();
    let groups = target.groups_snapshot();
    let group = groups.iter().find(|g| g["displayName"] == name)?;
    let mut names: Vec<String> = group["members"]
        .as_array()?
        .iter()
        .filter_map(|m| {
            let id = m["value"].as_str()?;
            users.iter().find(|u| u["id"] == id)?["userName"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Some(names)
}

/// A group job whose instance died while it was sending member changes: the target applied
/// the add (B is a member), the link still lists the members before it. B then leaves the
/// roster group and C joins it. The next job must not diff against the record alone (which
/// never had B, so nothing to remove): it reads the group's members again (or, where groups
/// are read without members, takes every account the app links) and removes B — and still
/// adds C, whom that wider set also holds.
#[tokio::test]
async fn a_group_job_lost_mid_change_leaves_no_member_roster_no_longer_wants() {
    use roster::dev_target::Kind;
    let app = spawn_app().await;
    for readable in [true, false] {
        let target = target_with(DevTargetArgs::default()).await;
        let name = format!("lost-{readable}");
        let (a, b, c) = (
            format!("LA{readable}"),
            format!("LB{readable}"),
            format!("LC{readable}"),
        );
        let group_id = app
            .post("/api/v1/groups", &json!({"name": name, "members": [a]}))
            .await
            .expect(201)["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let created = app
            .create_app(&sherpany(
                &name,
                &target.base_url(),
                TOKEN,
                json!({"group_push": [name],
                       "quirks": {"group_members_readable": readable}}),
            ))
            .await;
        let app_id = created["id"].as_str().unwrap_or_default().to_owned();
        for e in [&a, &b, &c] {
            app.post_event(&joiner(
                &format!("j{e}"),
                e,
                "2026-11-01T09:00:00Z",
                json!({}),
            ))
            .await;
        }
        let (a_name, b_name) = (
            format!("{}@example.com", a.to_lowercase()),
            format!("{}@example.com", b.to_lowercase()),
        );
        eventually("A in the target group", Duration::from_secs(20), || async {
            (target_group_members(&target, &name)? == [a_name.clone()]).then_some(())
        })
        .await;
        due_settled(&app, &app_id).await;

        // B is added; the job's instance dies after the target applied the add.
        app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
            .await
            .expect(200);
        app.patch(
            &format!("/api/v1/groups/{group_id}"),
            &json!({"members": [a, b]}),
        )
        .await
        .expect(200);
        sea_orm::ConnectionTrait::execute_unprepared(
            &app.db,
            &format!(
                "UPDATE job SET state = 'running', lease_owner = 'dead-instance', lease_until = 1 \
                 WHERE app_id = '{app_id}' AND resource_kind = 'group' AND state = 'pending'"
            ),
        )
        .await
        .expect("claimed by an instance that dies");
        let users = target.users_snapshot();
        let b_id = user(&users, &b_name).map(|u| u["id"].clone());
        let group = target.groups_snapshot()[0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(target.edit(Kind::Group, &group, |g| {
            if let Some(members) = g["members"].as_array_mut() {
                members.push(json!({"value": b_id}));
            }
        }));
        assert_eq!(
            target_group_members(&target, &name),
            Some(vec![a_name.clone(), b_name.clone()])
        );
        // B leaves the roster group, and C joins it, before the lost job is retried.
        app.patch(
            &format!("/api/v1/groups/{group_id}"),
            &json!({"members": [a, c]}),
        )
        .await
        .expect(200);
        app.post(&format!("/api/v1/apps/{app_id}/resume"), &json!({}))
            .await
            .expect(200);
        eventually("the lost job reclaimed", Duration::from_secs(30), || async {
            let running = app
                .rows(&format!(
                    "SELECT id FROM job WHERE app_id = '{app_id}' AND lease_owner = 'dead-instance' \
                     AND state = 'running'"
                ))
                .await;
            running.is_empty().then_some(())
        })
        .await;
        due_settled(&app, &app_id).await;
        let c_name = format!("{}@example.com", c.to_lowercase());
        assert_eq!(
            target_group_members(&target, &name),
            Some(vec![a_name.clone(), c_name]),
            "readable {readable}: B out of the group, C in"
        );
    }
}

/// The userNames in a target group, read through roster's SCIM client.
async fn group_member_names(base: &str, token: &str, group: &str) -> Option<Vec<String>> {
    let client = scim_client(base, token);
    let found = client.groups().find_by("displayName", group).await.ok()?;
    let [g] = found.as_slice() else { return None };
    let mut names = Vec::new();
    for m in g["members"].as_array().into_iter().flatten() {
        let user = client.users().get(m["value"].as_str()?).await.ok()?;
        names.push(user["userName"].as_str()?.to_lowercase());
    }
    names.sort();
    Some(names)
}

#[tokio::test]
async fn a_pushed_group_follows_roster_membership_on_the_third_party_peer() {
    let Some((base, token, _turn)) = peer().await else {
        return;
    };
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let group = format!("board-{tag}");
    let emp = |i: u8| format!("P{tag}{i}");
    let email = |i: u8| format!("p{tag}{i}@example.com");
    app.post(
        "/api/v1/groups",
        &json!({"name": group, "members": [emp(1), emp(2)]}),
    )
    .await
    .expect(201);
    app.create_app(&sherpany(
        &format!("push-{tag}"),
        &base,
        &token,
        json!({"group_push": [group], "max_concurrency": 2}),
    ))
    .await;
    for i in 1..=3u8 {
        app.post_event(&joiner(
            &format!("j{tag}{i}"),
            &emp(i),
            "2026-11-01T09:00:00Z",
            json!({"email": email(i)}),
        ))
        .await;
    }
    eventually(
        "both members in the peer's group",
        Duration::from_secs(30),
        || async {
            (group_member_names(&base, &token, &group).await? == [email(1), email(2)]).then_some(())
        },
    )
    .await;
    let group_id = app.get("/api/v1/groups").await.expect(200)["items"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.patch(
        &format!("/api/v1/groups/{group_id}"),
        &json!({"members": [emp(1), emp(3)]}),
    )
    .await
    .expect(200);
    eventually(
        "membership changed in the peer",
        Duration::from_secs(30),
        || async {
            (group_member_names(&base, &token, &group).await? == [email(1), email(3)]).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_throttling_target_gets_everyone_within_its_limit() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        rate_limit: Some(5),
        ..Default::default()
    })
    .await;
    // roster is configured faster than the target allows, so the target answers 429s.
    let created = app
        .create_app(&sherpany(
            "slow",
            &target.base_url(),
            TOKEN,
            json!({"rate_limit": {"per_second": 40, "burst": 40}}),
        ))
        .await;
    post_joiners(&app, "t", "T", 12).await;
    eventually(
        "all 12 users despite 429s",
        Duration::from_secs(60),
        || async { (target.stats()["users"] == 12).then_some(()) },
    )
    .await;
    app.settled(
        created["id"].as_str().unwrap_or_default(),
        Duration::from_secs(30),
    )
    .await;
    let stats = target.stats();
    assert!(
        stats["throttled"].as_u64().unwrap_or_default() > 0,
        "the target throttled: {stats}"
    );
    // The target counts throttled POSTs as requests too; what was created shows in the log.
    let created_ok = app
        .rows("SELECT id FROM operation WHERE method = 'POST' AND status = 201")
        .await;
    assert_eq!(created_ok.len(), 12, "no user created twice: {stats}");
    assert_eq!(stats["users"], 12);
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("roster_throttled_total{app=\"slow\"}"),
        "429s are counted"
    );
    assert_eq!(
        app.rows("SELECT id FROM job WHERE state = 'dead'")
            .await
            .len(),
        0
    );
}

/// A joiner's first call is answered 429 with `Retry-After` of 3 s (as seconds or as an HTTP
/// date); returns how long the account took to appear. A Retry-After that was not understood
/// (a broken HTTP-date parse falls back to 1 s) shows as a shorter wait.
async fn measured_retry_after(http_date: bool) -> Duration {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        throttle_first: 1,
        throttle_seconds: 3,
        retry_after_http_date: http_date,
        ..Default::default()
    })
    .await;
    app.create_app(&sherpany("paused", &target.base_url(), TOKEN, json!({})))
        .await;
    let started = std::time::Instant::now();
    post_joiners(&app, "w", "W", 1).await;
    eventually(
        "the user after the pause",
        Duration::from_secs(20),
        || async { (target.stats()["users"] == 1).then_some(()) },
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(target.stats()["throttled"], 1, "{}", target.stats());
    waited
}

#[tokio::test]
async fn retry_after_in_seconds_is_waited_out() {
    let waited = measured_retry_after(false).await;
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(10),
        "waited {waited:?} for a Retry-After of 3 s"
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_waited_out() {
    let waited = measured_retry_after(true).await;
    // The date has whole seconds: "3 s from now" is between 2 and 3 s away.
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "waited {waited:?} for a Retry-After date 3 s ahead"
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured_too() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        rate_limit: Some(4),
        retry_after_http_date: true,
        ..Default::default()
    })
    .await;
    let created = app
        .create_app(&sherpany(
            "dated",
            &target.base_url(),
            TOKEN,
            json!({"rate_limit": {"per_second": 40, "burst": 40}}),
        ))
        .await;
    post_joiners(&app, "h", "H", 6).await;
    eventually("all 6 users", Duration::from_secs(60), || async {
        (target.stats()["users"] == 6).then_some(())
    })
    .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.settled(&app_id, Duration::from_secs(30)).await;
    assert!(
        target.stats()["throttled"].as_u64().unwrap_or_default() > 0,
        "{}",
        target.stats()
    );
    let throttled = app
        .rows("SELECT error FROM operation WHERE status = 429")
        .await;
    assert!(!throttled.is_empty());
    assert_eq!(
        app.rows("SELECT id FROM job WHERE state = 'dead'")
            .await
            .len(),
        0
    );
}

#[tokio::test]
async fn a_reply_lost_after_the_target_applied_a_post_does_not_create_twice() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        drop_reply_rate: 0.5,
        seed: Some(11),
        ..Default::default()
    })
    .await;
    let created = app
        .create_app(&sherpany(
            "lossy",
            &target.base_url(),
            TOKEN,
            json!({"timeout_ms": 300}),
        ))
        .await;
    post_joiners(&app, "r", "R", 6).await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    eventually("every person linked", Duration::from_secs(90), || async {
        let linked = app
            .rows(&format!(
                "SELECT id FROM link WHERE app_id = '{app_id}' AND state = 'linked'"
            ))
            .await;
        (linked.len() == 6).then_some(())
    })
    .await;
    let stats = target.stats();
    assert!(
        stats["dropped"].as_u64().unwrap_or_default() > 0,
        "replies were lost: {stats}"
    );
    assert_eq!(stats["users"], 6, "{stats}");
    // The target's userName uniqueness would hide a second POST; count them instead.
    assert_eq!(
        stats["requests"]["POST"], 6,
        "no account POSTed twice: {stats}"
    );
    // Each lost POST was followed by a look-up that found the account and linked it.
    let ids: std::collections::HashSet<String> = target
        .users_snapshot()
        .iter()
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect();
    for l in app
        .rows(&format!(
            "SELECT target_id FROM link WHERE app_id = '{app_id}'"
        ))
        .await
    {
        assert!(
            l["target_id"].as_str().is_some_and(|t| ids.contains(t)),
            "{l}"
        );
    }
}

/// A write whose answer is lost may have been applied: roster must not trust its snapshot
/// afterwards. Every write's reply is lost here; a leaver's deactivation lands unanswered, then
/// the person is re-hired: the account must become active again, although the snapshot (never
/// updated, the PATCH having "failed") still says active.
#[tokio::test]
async fn a_write_with_an_unknown_outcome_is_not_trusted_by_the_next_delivery() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        drop_reply_rate: 1.0,
        ..Default::default()
    })
    .await;
    app.create_app(&sherpany(
        "unanswered",
        &target.base_url(),
        TOKEN,
        json!({"timeout_ms": 300, "max_attempts": 100}),
    ))
    .await;
    let account = |active: bool| {
        let target = &target;
        move || {
            let users = target.users_snapshot();
            let found = user(&users, "u1@example.com")
                .is_some_and(|u| u["active"].as_bool().unwrap_or(true) == active);
            async move { found.then_some(()) }
        }
    };
    app.post_event(&joiner("u-j", "U1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    // The POST lands unanswered; the retry finds the account and links it.
    eventually("the account linked", Duration::from_secs(20), || async {
        let linked = app
            .rows("SELECT id FROM link WHERE state = 'linked' AND snapshot IS NOT NULL")
            .await;
        (linked.len() == 1).then_some(())
    })
    .await;
    app.post_event(&event(
        "u-l",
        "leaver",
        "U1",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    eventually(
        "the deactivation applied",
        Duration::from_secs(20),
        account(false),
    )
    .await;
    app.post_event(&joiner("u-r", "U1", "2026-11-01T11:00:00Z", json!({})))
        .await;
    eventually(
        "the re-hire applied (active again)",
        Duration::from_secs(20),
        account(true),
    )
    .await;
    assert_eq!(target.stats()["users"], 1, "{}", target.stats());
}

/// A create whose answer is lost may have made the account; when the person leaves before the
/// retry links it, that account must still be deactivated, not left active with no link.
#[tokio::test]
async fn a_leaver_right_after_an_unanswered_create_is_deactivated() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        drop_reply_rate: 1.0,
        ..Default::default()
    })
    .await;
    app.create_app(&sherpany(
        "unanswered-create",
        &target.base_url(),
        TOKEN,
        json!({"timeout_ms": 1000, "max_attempts": 100}),
    ))
    .await;
    app.post_event(&joiner("v-j", "V1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let account = |active: bool| {
        let target = &target;
        move || {
            let users = target.users_snapshot();
            let found = user(&users, "v1@example.com")
                .is_some_and(|u| u["active"].as_bool().unwrap_or(true) == active);
            async move { found.then_some(()) }
        }
    };
    // The POST has landed; its answer will never come (the job waits for its 1 s timeout).
    eventually(
        "the account created",
        Duration::from_secs(10),
        account(true),
    )
    .await;
    app.post_event(&event(
        "v-l",
        "leaver",
        "V1",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    eventually(
        "the unanswered account deactivated",
        Duration::from_secs(20),
        account(false),
    )
    .await;
    assert_eq!(target.stats()["users"], 1, "{}", target.stats());
}

#[tokio::test]
async fn bursts_of_5xx_and_a_hanging_target_are_retried_until_delivered() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        fail_rate: 0.2,
        hang_rate: 0.05,
        seed: Some(7),
        ..Default::default()
    })
    .await;
    let created = app
        .create_app(&sherpany(
            "flaky",
            &target.base_url(),
            TOKEN,
            json!({"timeout_ms": 400}),
        ))
        .await;
    post_joiners(&app, "f", "F", 8).await;
    eventually(
        "all 8 users despite faults",
        Duration::from_secs(120),
        || async { (target.stats()["users"] == 8).then_some(()) },
    )
    .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.settled(&app_id, Duration::from_secs(60)).await;
    let stats = target.stats();
    assert!(
        stats["failed"].as_u64().unwrap_or_default() + stats["hung"].as_u64().unwrap_or_default()
            > 0,
        "{stats}"
    );
    let failures = app
        .get(&format!("/api/v1/operations?app={app_id}&state=failed"))
        .await
        .expect(200);
    assert!(
        failures["items"].as_array().is_some_and(|a| !a.is_empty()),
        "failed calls are logged"
    );
    assert_eq!(
        app.rows("SELECT id FROM job WHERE state = 'dead'")
            .await
            .len(),
        0
    );
    // Every identity is linked to exactly one account.
    let links = app
        .rows(&format!(
            "SELECT target_id FROM link WHERE app_id = '{app_id}' AND state = 'linked'"
        ))
        .await;
    assert_eq!(links.len(), 8);
}

#[tokio::test]
async fn a_401_quarantines_the_app_and_a_probe_lifts_it_once_fixed() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany(
            "locked",
            &target.base_url(),
            "wrong-token",
            json!({}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner("q1", "Q1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let status = eventually("quarantine", Duration::from_secs(20), || async {
        let s = app.get(&format!("/api/v1/apps/{app_id}/status")).await.body;
        (s["state"] == "quarantined").then_some(s)
    })
    .await;
    assert!(
        status["state_reason"]
            .as_str()
            .is_some_and(|r| r.contains("401")),
        "{status}"
    );
    assert!(!status.to_string().contains("wrong-token"));
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("roster_app_quarantined{app=\"locked\"} 1"),
        "gauge set"
    );
    assert_eq!(target.stats()["users"], 0);
    // The platform team fixes the token; the next probe finds it good and delivery resumes.
    app.patch(
        &format!("/api/v1/apps/{app_id}"),
        &json!({"auth": {"type": "bearer", "token": TOKEN}}),
    )
    .await
    .expect(200);
    eventually(
        "delivery after the probe",
        Duration::from_secs(30),
        || async { (target.stats()["users"] == 1).then_some(()) },
    )
    .await;
    let status = app
        .get(&format!("/api/v1/apps/{app_id}/status"))
        .await
        .expect(200);
    assert_eq!(status["state"], "active", "{status}");
}

/// A target that finds no one and refuses every write with `status` and a SCIM error: the
/// permanent refusals of a real app (a 400 for a value it does not accept, a 403 for a token
/// without the right to create users). Stops with the returned token.
async fn refusing_target(status: u16) -> (String, tokio_util::sync::CancellationToken) {
    let endpoint = poem::endpoint::make_sync(move |req: poem::Request| {
        if req.method() != poem::http::Method::GET {
            let mut refusal = scim_error(status);
            refusal["detail"] = json!("refused by the stub");
            return scim_answer(status, &refusal);
        }
        if req.uri().path().ends_with("/ServiceProviderConfig") {
            scim_answer(200, &stub_service_provider_config())
        } else {
            scim_answer(200, &empty_list())
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = serve_until(endpoint, stop.clone()).await;
    (format!("http://{addr}/scim/v2"), stop)
}

/// The first dead job `GET /jobs?state=dead` lists, once there is one.
async fn first_dead_letter(app: &TestApp) -> Value {
    eventually("a dead letter", Duration::from_secs(20), || async {
        let jobs = app.get("/api/v1/jobs?state=dead").await.body;
        jobs["items"].as_array().and_then(|a| a.first().cloned())
    })
    .await
}

/// A target's own refusal of a create, 400 or 403, is permanent: the job is dead after one
/// attempt, with the target's answer as its reason, and the app is not quarantined for it.
#[tokio::test]
async fn a_target_refusal_400_or_403_is_a_dead_letter() {
    for status in [400_u16, 403] {
        let app = spawn_app().await;
        let (base, stop) = refusing_target(status).await;
        let name = format!("refuses-{status}");
        let created = app
            .create_app(&sherpany(&name, &base, TOKEN, json!({})))
            .await;
        let app_id = created["id"].as_str().unwrap_or_default().to_owned();
        app.post_event(&joiner(
            &format!("r{status}"),
            &format!("R{status}"),
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
        let dead = first_dead_letter(&app).await;
        assert_eq!(dead["app_id"], app_id.as_str());
        assert_eq!(dead["attempts"], 1, "not retried: {dead}");
        assert!(
            dead["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&status.to_string())),
            "{dead}"
        );
        let posts = app
            .rows(&format!(
                "SELECT id FROM operation WHERE method = 'POST' AND status = {status}"
            ))
            .await;
        assert_eq!(posts.len(), 1, "one POST, refused with {status}");
        let app_status = app
            .get(&format!("/api/v1/apps/{app_id}/status"))
            .await
            .expect(200);
        assert_eq!(app_status["dead"], 1, "{app_status}");
        assert_ne!(app_status["state"], "quarantined", "{app_status}");
        stop.cancel();
    }
}

#[tokio::test]
async fn a_permanent_error_is_a_dead_letter_until_retried() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    // userName comes from an HR attribute this person lacks: nothing to match or create with.
    let created = app
        .create_app(&sherpany(
            "dead",
            &target.base_url(),
            TOKEN,
            json!({"mappings": [{"target": "userName", "source": "attributes.login"},
                                {"target": "externalId", "source": "employee_id"}]}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner("d1", "D1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let dead = first_dead_letter(&app).await;
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("userName")),
        "{dead}"
    );
    assert_eq!(dead["app_id"], app_id.as_str());
    let status = app
        .get(&format!("/api/v1/apps/{app_id}/status"))
        .await
        .expect(200);
    assert_eq!(status["dead"], 1);

    let id = dead["id"].as_i64().unwrap_or_default();
    // Paused, the retried job stays pending: otherwise the engine may run it and dead-letter it
    // again (it makes no call) before the second retry below is sent.
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    let retried = app
        .post(&format!("/api/v1/jobs/{id}/retry"), &json!({}))
        .await
        .expect(200);
    assert_eq!(retried["state"], "pending");
    assert_eq!(retried["attempts"], 0);
    app.post(&format!("/api/v1/jobs/{id}/retry"), &json!({}))
        .await
        .problem(409);
    app.post(&format!("/api/v1/apps/{app_id}/resume"), &json!({}))
        .await
        .expect(200);
    // Still undeliverable: dead again, not lost and not looping.
    eventually("dead again", Duration::from_secs(20), || async {
        let jobs = app.get("/api/v1/jobs?state=dead").await.body;
        (jobs["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    // Once HR sends the attribute, the next change is delivered.
    app.post_event(&event(
        "d2",
        "mover",
        "D1",
        "2026-11-01T10:00:00Z",
        json!({"attributes": {"login": "dora"}}),
    ))
    .await;
    eventually(
        "delivered after the fix",
        Duration::from_secs(20),
        || async { user(&target.users_snapshot(), "dora").cloned() },
    )
    .await;
}

#[tokio::test]
async fn delete_policies_remove_the_account() {
    // Two apps on one target would collide on userName: each gets its own target.
    let app2 = spawn_app().await;
    let t_delete = target_with(DevTargetArgs::default()).await;
    let t_later = target_with(DevTargetArgs::default()).await;
    app2.create_app(&sherpany(
        "del",
        &t_delete.base_url(),
        TOKEN,
        json!({"deprovision": {"action": "delete"}}),
    ))
    .await;
    app2.create_app(&sherpany(
        "later",
        &t_later.base_url(),
        TOKEN,
        json!({"deprovision": {"action": "deactivate", "delete_after_days": 0}}),
    ))
    .await;
    app2.post_event(&joiner("j", "L1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    eventually("created in both", Duration::from_secs(20), || async {
        (t_delete.stats()["users"] == 1 && t_later.stats()["users"] == 1).then_some(())
    })
    .await;
    app2.post_event(&event(
        "l",
        "leaver",
        "L1",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    eventually(
        "deleted at once, and deactivated-then-deleted",
        Duration::from_secs(30),
        || async {
            (t_delete.stats()["users"] == 0 && t_later.stats()["users"] == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        t_later.stats()["requests"]["PATCH"],
        1,
        "deactivated first: {}",
        t_later.stats()
    );
    // The link is written with the job's end, a moment after the target saw the DELETE.
    eventually("both links deleted", Duration::from_secs(10), || async {
        let person = app2.get("/api/v1/identities/L1").await.expect(200);
        let links = person["links"].as_array().cloned().unwrap_or_default();
        (links.len() == 2 && links.iter().all(|l| l["state"] == "deleted")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn provision_on_demand_returns_every_call() {
    let app = spawn_app_with_engine_off().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("pod", &target.base_url(), TOKEN, json!({})))
        .await;
    app.post_event(&joiner(
        "p1",
        "P1",
        "2026-11-01T09:00:00Z",
        json!({"title": "Pilot"}),
    ))
    .await;
    let answer = app
        .post(
            &format!(
                "/api/v1/apps/{}/provision-on-demand",
                created["id"].as_str().unwrap_or_default()
            ),
            &json!({"identity_id": "P1"}),
        )
        .await
        .expect(200);
    assert_eq!(answer["operation"], "create", "{answer}");
    let calls: Vec<(String, String, String)> = answer["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (text("operation"), text("method"), c["status"].to_string())
        })
        .collect();
    // Discovery reads may come first; then the look-up by userName, then the create.
    let tail = &calls[calls.len().saturating_sub(2)..];
    assert_eq!(
        tail,
        [
            ("adopt".to_owned(), "GET".to_owned(), "200".to_owned()),
            ("create".to_owned(), "POST".to_owned(), "201".to_owned())
        ],
        "{answer}"
    );
    assert!(answer["calls"].as_array().into_iter().flatten().any(|c| {
        c["path"]
            .as_str()
            .is_some_and(|p| p.contains("filter=userName"))
    }));
    assert!(user(&target.users_snapshot(), "p1@example.com").is_some());
    let again = app
        .post(
            &format!(
                "/api/v1/apps/{}/provision-on-demand",
                created["id"].as_str().unwrap_or_default()
            ),
            &json!({"identity_id": "P1"}),
        )
        .await
        .expect(200);
    assert_eq!(again["operation"], "noop", "already in line: {again}");
    assert_eq!(again["calls"], json!([]));
}

#[tokio::test]
async fn provision_on_demand_answers_with_the_link_and_group_job_stored() {
    let app = spawn_app_with_engine_off().await;
    let target = target_with(DevTargetArgs::default()).await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "pod-room", "members": ["P2"]}),
    )
    .await
    .expect(201);
    let created = app
        .create_app(&sherpany(
            "pod-push",
            &target.base_url(),
            TOKEN,
            json!({"group_push": ["pod-room"]}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner("p2", "P2", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let answer = app
        .post(
            &format!("/api/v1/apps/{app_id}/provision-on-demand"),
            &json!({"identity_id": "P2"}),
        )
        .await
        .expect(200);
    assert_eq!(answer["operation"], "create", "{answer}");
    // Stored before the answer: no waiting.
    let account = user(&target.users_snapshot(), "p2@example.com")
        .cloned()
        .unwrap_or_default();
    let id = identity_id(&app, "P2").await;
    let link = app
        .rows(&format!(
            "SELECT target_id, state FROM link WHERE app_id = '{app_id}' AND resource_id = '{id}'"
        ))
        .await;
    assert_eq!(link.len(), 1, "{link:?}");
    assert_eq!(link[0]["target_id"], account["id"]);
    assert_eq!(link[0]["state"], "linked");
    let group_jobs = app
        .rows(&format!(
            "SELECT id FROM job WHERE app_id = '{app_id}' AND resource_kind = 'group' \
             AND resource_id = 'pod-room' AND state = 'pending'"
        ))
        .await;
    assert_eq!(group_jobs.len(), 1, "the pushed group's follow-up job");
}

async fn spawn_app_with_engine_off() -> TestApp {
    crate::helpers::spawn_planner().await
}

#[tokio::test]
async fn a_hand_made_account_is_adopted_not_duplicated() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    // Someone created the account in the app before roster managed it, as an earlier POST
    // whose answer was lost would have.
    target
        .insert(
            roster::dev_target::Kind::User,
            json!({"schemas": [roster::scim::schemas::USER], "userName": "A1@example.com", "title": "Old"}),
        )
        .expect("insert");
    let created = app
        .create_app(&sherpany("adopt", &target.base_url(), TOKEN, json!({})))
        .await;
    app.post_event(&joiner(
        "a1",
        "A1",
        "2026-11-01T09:00:00Z",
        json!({"title": "New"}),
    ))
    .await;
    app.settled(
        created["id"].as_str().unwrap_or_default(),
        Duration::from_secs(20),
    )
    .await;
    let users = target.users_snapshot();
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0]["title"], "New");
    assert_eq!(
        target.stats()["requests"]["POST"],
        Value::Null,
        "adopted, never POSTed"
    );
    let id = identity_id(&app, "A1").await;
    let link = app
        .rows(&format!(
            "SELECT target_id, state FROM link WHERE resource_id = '{id}'"
        ))
        .await;
    assert_eq!(link[0]["target_id"], users[0]["id"]);
}

fn inactive_users(target: &DevTarget) -> usize {
    target
        .users_snapshot()
        .iter()
        .filter(|u| u["active"] == json!(false))
        .count()
}

/// An HR export gone wrong: a burst of leavers above the app's deletion guard is held — the app
/// is paused with the reason after `max_count` deprovisions — until an admin approves them,
/// which lets the waiting ones through.
#[tokio::test]
async fn a_burst_of_leavers_above_the_deletion_guard_waits_for_approval() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let app_id = guarded_app(
        &app,
        &target,
        "guarded",
        json!({"max_concurrency": 1,
                   "deletion_guard": {"max_count": 3, "max_fraction": 1.0,
                                      "on_events": true, "window_minutes": 60}}),
        ("g", "G", 12),
    )
    .await;

    post_leavers(&app, "gl", "G", 8).await;
    let status = paused_status(&app, &app_id).await;
    let shown = status.to_string();
    assert!(
        shown.contains("deletion guard") && shown.contains("approve_deprovisions"),
        "the status says why and how to approve: {shown}"
    );
    // Held: no more than max_count went through; the other five wait as pending jobs of the
    // paused app, which the engine does not claim (a state to reach, not a window of time).
    eventually("the other five held", Duration::from_secs(30), || async {
        let jobs = app
            .rows(&format!(
                "SELECT state FROM job WHERE app_id = '{app_id}' AND state IN ('pending', 'running')"
            ))
            .await;
        (jobs.len() == 5 && jobs.iter().all(|j| j["state"] == "pending")).then_some(())
    })
    .await;
    assert_eq!(
        inactive_users(&target),
        3,
        "only max_count deprovisions ran"
    );

    app.post(
        &format!("/api/v1/apps/{app_id}/resume"),
        &json!({"approve_deprovisions": true}),
    )
    .await
    .expect(200);
    eventually(
        "all 8 leavers deactivated",
        Duration::from_secs(30),
        || async { (inactive_users(&target) == 8).then_some(()) },
    )
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    let after = app
        .get(&format!("/api/v1/apps/{app_id}/status"))
        .await
        .expect(200);
    assert_eq!(
        after["state"], "active",
        "approval does not re-trip the guard: {after}"
    );
    assert_eq!(inactive_users(&target), 8);
}

/// Many joiners at once: their matching look-ups are merged into listings of several values
/// (or answered by a listing of the small target, kept a while), hand-made accounts among
/// them are still adopted (never created twice), and every person's provisioning log shows
/// the look-up that served them.
#[tokio::test]
async fn joiners_in_a_batch_share_look_ups_and_still_adopt_existing_accounts() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    for i in [3, 17] {
        target
            .insert(
                roster::dev_target::Kind::User,
                json!({"schemas": [roster::scim::schemas::USER], "userName": format!("BULK{i}@EXAMPLE.COM")}),
            )
            .expect("insert");
    }
    let created = app
        .create_app(&sherpany(
            "merged",
            &target.base_url(),
            TOKEN,
            json!({"max_concurrency": 16, "rate_limit": {"per_second": 1000, "burst": 1000}}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    post_joiners(&app, "bulk-", "BULK", 40).await;
    app.settled(&app_id, Duration::from_secs(60)).await;

    let users = target.users_snapshot();
    assert_eq!(users.len(), 40, "each joiner exactly once");
    let stats = target.stats();
    assert_eq!(stats["requests"]["POST"], 38, "two adopted: {stats}");
    let lookups = stats["requests"]["GET"].as_u64().unwrap_or(0);
    assert!(lookups < 40, "look-ups merged: {lookups} for 40 joiners");
    let logged = app
        .rows(&format!(
            "SELECT DISTINCT resource_id FROM operation \
             WHERE app_id = '{app_id}' AND method = 'GET' AND path LIKE '%/Users?%'"
        ))
        .await;
    assert_eq!(logged.len(), 40, "every person's log shows their look-up");
}

/// Sets `run_at` of the app's pending jobs for `kind` (through SQL: the order of two jobs is
/// the test's to choose).
async fn schedule_pending(app: &TestApp, app_id: &str, kind: &str, run_at_ms: i64) {
    let sql = format!(
        "UPDATE job SET run_at = {run_at_ms} WHERE app_id = '{app_id}' \
         AND resource_kind = '{kind}' AND state = 'pending'"
    );
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, &sql)
        .await
        .expect("reschedule");
}

/// Waits until the app has no pending or running job of `kind`.
async fn kind_settled(app: &TestApp, app_id: &str, kind: &str) {
    eventually("the jobs to run", Duration::from_secs(30), || async {
        app.rows(&format!(
            "SELECT id FROM job WHERE app_id = '{app_id}' AND resource_kind = '{kind}' \
             AND state IN ('pending', 'running')"
        ))
        .await
        .is_empty()
        .then_some(())
    })
    .await;
}

/// Waits until no job of the app is running or due (a scheduled delete may wait for days).
async fn due_settled(app: &TestApp, app_id: &str) {
    eventually("the due jobs to run", Duration::from_secs(30), || async {
        let now = roster::store::queue::now_ms();
        app.rows(&format!(
            "SELECT id FROM job WHERE app_id = '{app_id}' AND (state = 'running' \
             OR (state = 'pending' AND run_at <= {now}))"
        ))
        .await
        .is_empty()
        .then_some(())
    })
    .await;
}

/// A person who leaves and comes back (a re-hire, or with `mover` a move out of the app's
/// scope and back) is back in the pushed group, whether the group's job runs before their
/// account is re-activated (`group_first`) or after.
async fn comeback_is_back_in_the_pushed_group(base: &str, token: &str, group_first: bool) {
    comeback(base, token, group_first, false).await;
}

async fn comeback(base: &str, token: &str, group_first: bool, mover: bool) {
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let group = format!("room-{tag}");
    let emp = format!("R{tag}");
    let email = format!("r{tag}@example.com");
    app.post("/api/v1/groups", &json!({"name": group, "members": [emp]}))
        .await
        .expect(201);
    let created = app
        .create_app(&sherpany(
            &format!("back-{tag}"),
            base,
            token,
            json!({"group_push": [group],
                   "deprovision": {"action": "deactivate", "delete_after_days": 30}}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    let joined = json!({"email": email});
    app.post_event(&joiner(
        &format!("j1{tag}"),
        &emp,
        "2026-11-01T09:00:00Z",
        joined.clone(),
    ))
    .await;
    eventually("in the group", Duration::from_secs(30), || async {
        (group_member_names(base, token, &group).await? == [email.clone()]).then_some(())
    })
    .await;
    let out = if mover {
        let external = json!({"email": format!("r{tag}@partner.org")});
        event(
            &format!("l{tag}"),
            "mover",
            &emp,
            "2026-11-02T09:00:00Z",
            external,
        )
    } else {
        event(
            &format!("l{tag}"),
            "leaver",
            &emp,
            "2026-11-02T09:00:00Z",
            json!({}),
        )
    };
    app.post_event(&out).await;
    due_settled(&app, &app_id).await;
    assert_eq!(
        group_member_names(base, token, &group).await,
        Some(vec![]),
        "a leaver leaves the group"
    );
    // The re-hire's jobs wait until the order is set.
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    let back = if mover {
        event(
            &format!("j2{tag}"),
            "mover",
            &emp,
            "2026-11-03T09:00:00Z",
            joined,
        )
    } else {
        joiner(&format!("j2{tag}"), &emp, "2026-11-03T09:00:00Z", joined)
    };
    app.post_event(&back).await;
    if group_first {
        roster::store::queue::enqueue(
            &app.db,
            &[roster::store::queue::JobRequest {
                app_id: app_id.clone(),
                kind: roster::store::queue::ResourceKind::Group,
                resource_id: group.clone(),
                lane: roster::store::queue::Lane::Normal,
                run_at_ms: 0,
                hr_event_id: None,
            }],
        )
        .await
        .expect("enqueue the group's job");
        schedule_pending(&app, &app_id, "user", i64::MAX / 2).await;
    }
    app.post(&format!("/api/v1/apps/{app_id}/resume"), &json!({}))
        .await
        .expect(200);
    if group_first {
        kind_settled(&app, &app_id, "group").await;
        schedule_pending(&app, &app_id, "user", 0).await;
    }
    due_settled(&app, &app_id).await;
    let account = read_user(base, token, &email).await.unwrap_or_default();
    assert_eq!(account["active"], json!(true), "re-activated: {account}");
    assert_eq!(
        group_member_names(base, token, &group).await,
        Some(vec![email.clone()]),
        "back in the pushed group (group's job first: {group_first})"
    );
}

#[tokio::test]
async fn a_rehire_is_back_in_the_pushed_group_when_the_user_job_runs_first() {
    let target = target_with(DevTargetArgs::default()).await;
    comeback_is_back_in_the_pushed_group(&target.base_url(), TOKEN, false).await;
}

#[tokio::test]
async fn a_rehire_is_back_in_the_pushed_group_when_the_group_job_runs_first() {
    let target = target_with(DevTargetArgs::default()).await;
    comeback_is_back_in_the_pushed_group(&target.base_url(), TOKEN, true).await;
}

#[tokio::test]
async fn a_mover_back_in_scope_is_back_in_the_pushed_group_whichever_job_runs_first() {
    for group_first in [true, false] {
        let target = target_with(DevTargetArgs::default()).await;
        comeback(&target.base_url(), TOKEN, group_first, true).await;
    }
}

#[tokio::test]
async fn a_rehire_is_back_in_the_pushed_group_on_the_third_party_peer() {
    let Some((base, token, _turn)) = peer().await else {
        return;
    };
    comeback_is_back_in_the_pushed_group(&base, &token, true).await;
}

/// One number of the `/metrics` text: the sample whose name and labels start with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A leaver in an app that deletes 30 days after deactivating: returns the app id, the
/// person's identity id and the scheduled delete's date.
async fn leaver_with_scheduled_delete(
    app: &TestApp,
    target: &DevTarget,
    name: &str,
    emp: &str,
) -> (String, String, i64) {
    let created = app
        .create_app(&sherpany(
            name,
            &target.base_url(),
            TOKEN,
            json!({"deprovision": {"action": "deactivate", "delete_after_days": 30}}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner(
        &format!("j-{emp}"),
        emp,
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    due_settled(app, &app_id).await;
    app.post_event(&event(
        &format!("l-{emp}"),
        "leaver",
        emp,
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    due_settled(app, &app_id).await;
    let id = identity_id(app, emp).await;
    let link = app
        .rows(&format!(
            "SELECT state, delete_after FROM link WHERE app_id = '{app_id}' AND resource_id = '{id}'"
        ))
        .await;
    assert_eq!(link[0]["state"], "deactivated", "{link:?}");
    let due = link[0]["delete_after"].as_i64().unwrap_or_default();
    let day = 86_400_000;
    assert!(due > roster::store::queue::now_ms() + 29 * day, "{link:?}");
    (app_id, id, due)
}

/// Moves the scheduled delete of person `id` in `app_id` into the past, for the link and the
/// queued job alike: its date has come.
async fn make_delete_due(app: &TestApp, app_id: &str, id: &str) {
    let past = roster::store::queue::now_ms() - 1_000;
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!(
            "UPDATE link SET delete_after = {past} WHERE app_id = '{app_id}' AND resource_id = '{id}'"
        ),
    )
    .await
    .expect("the date comes for the link");
    schedule_pending(app, app_id, "user", past).await;
}

/// The pending jobs of one person: `(lane, run_at)`.
async fn pending_user_jobs(app: &TestApp, app_id: &str, id: &str) -> Vec<(String, i64)> {
    app.rows(&format!(
        "SELECT lane, run_at FROM job WHERE app_id = '{app_id}' AND resource_id = '{id}' \
         AND state = 'pending'"
    ))
    .await
    .iter()
    .map(|r| {
        (
            r["lane"].as_str().unwrap_or_default().to_owned(),
            r["run_at"].as_i64().unwrap_or_default(),
        )
    })
    .collect()
}

#[tokio::test]
async fn a_scheduled_delete_keeps_its_date_through_a_reclaim_and_is_not_a_stall() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let (app_id, id, due) = leaver_with_scheduled_delete(&app, &target, "sched", "SD1").await;
    assert_eq!(
        pending_user_jobs(&app, &app_id, &id).await,
        [("deprovision".to_owned(), due)]
    );
    // A day goes by.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!("UPDATE job SET enqueued_at = enqueued_at - 86400000 WHERE app_id = '{app_id}'"),
    )
    .await
    .expect("age the queue");
    let status = app
        .get(&format!("/api/v1/apps/{app_id}/status"))
        .await
        .expect(200);
    assert!(
        status["oldest_pending_seconds"]
            .as_f64()
            .unwrap_or_default()
            < 60.0,
        "a delete that is not due yet is no stall: {status}"
    );
    // The engine publishes the gauge every couple of seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    let gauge = metric(
        &metrics,
        "roster_queue_oldest_pending_seconds{app=\"sched\"}",
    );
    assert!(gauge.is_some_and(|g| g < 60.0), "gauge {gauge:?}");
    // The delete's job is taken over from an instance that died: reclaimed, and the account's
    // state is unknown again.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!(
            "UPDATE job SET state = 'running', lease_owner = 'gone', lease_until = 1 \
             WHERE app_id = '{app_id}' AND state = 'pending'"
        ),
    )
    .await
    .expect("a dead instance's lease");
    roster::store::queue::release(&app.db, None, roster::store::queue::now_ms())
        .await
        .expect("reclaim");
    assert_eq!(
        pending_user_jobs(&app, &app_id, &id).await,
        [("deprovision".to_owned(), due)]
    );
    // Any change to the person then runs their job at once.
    app.post_event(&event(
        "m-SD1",
        "mover",
        "SD1",
        "2026-11-03T09:00:00Z",
        json!({"title": "Ex"}),
    ))
    .await;
    due_settled(&app, &app_id).await;
    let link = app
        .rows(&format!(
            "SELECT state, delete_after FROM link WHERE app_id = '{app_id}' AND resource_id = '{id}'"
        ))
        .await;
    assert_eq!(link[0]["state"], "deactivated", "{link:?}");
    assert_eq!(
        link[0]["delete_after"].as_i64(),
        Some(due),
        "the date is kept"
    );
    assert_eq!(
        pending_user_jobs(&app, &app_id, &id).await,
        [("deprovision".to_owned(), due)]
    );
    assert_eq!(target.stats()["users"], 1, "not deleted early");
}

#[tokio::test]
async fn a_rehire_cancels_the_scheduled_delete_and_is_timed_from_its_own_event() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let (app_id, id, _) = leaver_with_scheduled_delete(&app, &target, "rehire-sched", "SD2").await;
    // The re-hire comes a day after the delete was scheduled.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!("UPDATE job SET enqueued_at = enqueued_at - 86400000 WHERE app_id = '{app_id}'"),
    )
    .await
    .expect("age the queue");
    app.post_event(&joiner("j2-SD2", "SD2", "2026-11-05T09:00:00Z", json!({})))
        .await;
    due_settled(&app, &app_id).await;
    let link = app
        .rows(&format!(
            "SELECT state, delete_after FROM link WHERE app_id = '{app_id}' AND resource_id = '{id}'"
        ))
        .await;
    assert_eq!(link[0]["state"], "linked", "{link:?}");
    assert_eq!(link[0]["delete_after"], Value::Null, "{link:?}");
    assert_eq!(
        pending_user_jobs(&app, &app_id, &id).await,
        [],
        "no delete waits"
    );
    assert_eq!(target.users_snapshot()[0]["active"], json!(true));
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    let series = "roster_event_to_target_seconds_bucket{app=\"rehire-sched\",operation=\"update\",le=\"3600\"}";
    let within_an_hour = metric(&metrics, series);
    let all = metric(
        &metrics,
        "roster_event_to_target_seconds_count{app=\"rehire-sched\",operation=\"update\"}",
    );
    assert!(
        all.is_some_and(|n| n >= 1.0),
        "the re-hire is observed: {all:?}"
    );
    assert_eq!(
        within_an_hour, all,
        "timed from the re-hire, not from the leaver"
    );
}

/// RFC 7643 makes `emails.value` `caseExact: false`: a target that lower-cases the address is
/// in line, not drifted, on every reconciliation run.
#[tokio::test]
async fn an_email_lower_cased_by_the_target_is_no_drift() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("lower", &target.base_url(), TOKEN, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner(
        "jc",
        "CASE1",
        "2026-11-01T09:00:00Z",
        json!({"email": "Cy.Case@Example.com"}),
    ))
    .await;
    due_settled(&app, &app_id).await;
    let account = user(&target.users_snapshot(), "cy.case@example.com")
        .cloned()
        .unwrap_or_default();
    let id = account["id"].as_str().unwrap_or_default().to_owned();
    assert!(target.edit(roster::dev_target::Kind::User, &id, |u| {
        for e in u["emails"].as_array_mut().into_iter().flatten() {
            let lower = e["value"].as_str().map(str::to_lowercase);
            e["value"] = json!(lower);
        }
    }));
    for run in 0..2 {
        let report = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
        assert_eq!(report["counts"]["drifted"], 0, "run {run}: {report}");
        assert_eq!(report["counts"]["in_sync"], 1, "run {run}: {report}");
    }
}

/// A matching attribute that selects one element of a multi-valued attribute cannot be looked
/// up with a plain `eq` filter: the app is refused when registered, naming the field, instead
/// of dead-lettering every create.
#[tokio::test]
async fn a_filtered_matching_attribute_is_refused_at_registration() {
    let app = spawn_app().await;
    let body = sherpany(
        "filtered-match",
        "http://127.0.0.1:9/scim/v2",
        TOKEN,
        json!({"matching": {"target_attribute": "emails[type eq \"work\"].value"}}),
    );
    let detail = app.post("/api/v1/apps", &body).await.problem(422);
    assert!(detail.contains("matching.target_attribute"), "{detail}");
}

/// roster's client for a target, for edits "by hand" in the app.
fn hand_client(base: &str, token: &str) -> roster::scim::ScimClient {
    scim_client(base, token)
}

/// Elements of a multi-valued attribute that roster does not render (a role and an email
/// added in the app) survive roster changing its own element of the same attribute.
async fn foreign_elements_survive(base: &str, token: &str) {
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let emp = format!("F{tag}");
    let email = format!("f{tag}@example.com");
    let moved = format!("f{tag}.new@example.com");
    let admins = format!("admins-{tag}");
    app.post("/api/v1/groups", &json!({"name": admins, "members": []}))
        .await
        .expect(201);
    let mut body = sherpany(&format!("foreign-{tag}"), base, token, json!({}));
    body["role_mapping"]["rules"] = json!([{"group": admins, "value": "admin"}]);
    let created = app.create_app(&body).await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner(
        &format!("j{tag}"),
        &emp,
        "2026-11-01T09:00:00Z",
        json!({"email": email}),
    ))
    .await;
    due_settled(&app, &app_id).await;
    let account = read_user(base, token, &email).await.expect("created");
    let id = account["id"].as_str().unwrap_or_default().to_owned();
    hand_client(base, token)
        .users()
        .patch(
            &id,
            &roster::scim::PatchRequest::new()
                .add("roles", json!([{"value": "billing", "type": "billing"}]))
                .add(
                    "emails",
                    json!([{"value": format!("{tag}@home.example"), "type": "home"}]),
                ),
        )
        .await
        .expect("edit by hand");
    let group_id = app.get("/api/v1/groups").await.expect(200)["items"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.patch(
        &format!("/api/v1/groups/{group_id}"),
        &json!({"members": [emp]}),
    )
    .await
    .expect(200);
    app.post_event(&event(
        &format!("m{tag}"),
        "mover",
        &emp,
        "2026-11-02T09:00:00Z",
        json!({"email": moved}),
    ))
    .await;
    due_settled(&app, &app_id).await;
    let account = hand_client(base, token)
        .users()
        .get(&id)
        .await
        .expect("read");
    let values = |attr: &str, kind: &str| -> Vec<String> {
        account[attr]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == kind || (kind.is_empty() && e["primary"] == json!(true)))
            .filter_map(|e| e["value"].as_str().map(str::to_lowercase))
            .collect()
    };
    assert_eq!(
        values("roles", ""),
        ["admin"],
        "roster's role changed: {account}"
    );
    assert_eq!(
        values("roles", "billing"),
        ["billing"],
        "the app's own role kept: {account}"
    );
    assert_eq!(values("emails", "work"), [moved], "{account}");
    assert_eq!(
        values("emails", "home"),
        [format!("{tag}@home.example")],
        "{account}"
    );
}

#[tokio::test]
async fn elements_roster_does_not_render_survive_its_updates() {
    let target = target_with(DevTargetArgs::default()).await;
    foreign_elements_survive(&target.base_url(), TOKEN).await;
}

#[tokio::test]
async fn elements_roster_does_not_render_survive_its_updates_on_the_third_party_peer() {
    let Some((base, token, _turn)) = peer().await else {
        return;
    };
    foreign_elements_survive(&base, &token).await;
}

/// The event-path deletion guard weighs concurrent deprovisions of one app one at a time: with
/// `max_count 2` and 16 leavers delivered 16 at once, at most 2 go through and the app is paused
/// by the guard (the check and the taking of its slot are one step per app).
#[tokio::test]
async fn concurrent_leavers_never_slip_past_the_deletion_guard() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs {
        latency_ms: 20,
        ..DevTargetArgs::default()
    })
    .await;
    let app_id = guarded_app(
        &app,
        &target,
        "raced",
        json!({"max_concurrency": 16,
                   "rate_limit": {"per_second": 1000, "burst": 1000},
                   "deletion_guard": {"max_count": 2, "max_fraction": 1.0,
                                      "on_events": true, "window_minutes": 60}}),
        ("r", "R", 16),
    )
    .await;

    post_leavers(&app, "rl", "R", 16).await;
    let status = paused_status(&app, &app_id).await;
    assert!(
        status.to_string().contains("deletion guard"),
        "paused by the guard: {status}"
    );
    // Whatever was in flight when it paused has ended: nothing of the app runs any more.
    eventually(
        "the jobs in flight to end",
        Duration::from_secs(20),
        || async {
            app.rows(&format!(
                "SELECT id FROM job WHERE app_id = '{app_id}' AND state = 'running'"
            ))
            .await
            .is_empty()
            .then_some(())
        },
    )
    .await;
    let deactivated = inactive_users(&target);
    assert_eq!(
        deactivated, 2,
        "{deactivated} of 16 deactivated with max_count 2"
    );
    let sent = app
        .rows(&format!(
            "SELECT id FROM operation WHERE app_id = '{app_id}' AND method = 'PATCH'"
        ))
        .await;
    assert_eq!(sent.len(), 2, "two deactivations sent: {sent:?}");
    let held = app
        .rows(&format!(
            "SELECT id FROM job WHERE app_id = '{app_id}' AND state = 'pending' AND lane = 'deprovision'"
        ))
        .await;
    assert_eq!(held.len(), 14, "the other leavers wait for an admin");
}

/// A deprovision counts once in the guard, also in the moment between the finisher's commit of
/// its log rows and the release of its in-flight slot. It counted twice there (in flight and in
/// the log), for every deprovision of a finisher batch at once: the guard paused an app below
/// its limit, and after an admin's approval held the last of the approved leavers again.
#[tokio::test]
async fn a_deprovision_whose_log_is_committed_before_its_slot_is_released_counts_once() {
    use roster::delivery::guard::{self, EventGuard, InFlightDeprovisions};
    use roster::store::entity::{app as app_row, operation};
    use sea_orm::{ActiveModelTrait, EntityTrait, Set};

    let app = spawn_planner().await;
    let created = app.create_app(&app_body("once", json!({}))).await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    let model = app_row::Entity::find_by_id(app_id.as_str())
        .one(&app.db)
        .await
        .expect("read the app")
        .expect("the app");
    let limits = roster::settings::DeletionGuard {
        max_fraction: 1.0,
        max_count: 2,
        on_events: true,
        window_minutes: 60,
    };
    let in_flight = std::sync::Arc::new(InFlightDeprovisions::default());
    let weigh = |job_id: i64| {
        let (db, in_flight, model, limits) = (&app.db, &in_flight, &model, &limits);
        async move {
            guard::check(db, in_flight, model, limits, job_id, chrono::Utc::now())
                .await
                .expect("weigh the guard")
        }
    };
    // The finisher's commit of a deprovision's log row (its PATCH to deactivate).
    let log = |job_id: i64| {
        let (db, app_id) = (&app.db, app_id.clone());
        async move {
            operation::ActiveModel {
                app_id: Set(app_id),
                job_id: Set(Some(job_id)),
                resource_kind: Set("user".into()),
                resource_id: Set(format!("person-{job_id}")),
                operation: Set("deactivate".into()),
                method: Set("PATCH".into()),
                path: Set("/Users/x".into()),
                status: Set(Some(200)),
                duration_ms: Set(1),
                attempt: Set(1),
                outcome: Set("succeeded".into()),
                created_at: Set(chrono::Utc::now()),
                ..Default::default()
            }
            .insert(db)
            .await
            .expect("log row");
        }
    };

    let EventGuard::Proceed(Some(first)) = weigh(1).await else {
        panic!("the first deprovision is held");
    };
    // Its log rows are committed; its slot is not released yet.
    log(1).await;
    let EventGuard::Proceed(Some(second)) = weigh(2).await else {
        panic!("the second deprovision (max_count 2) is held: the first was counted twice");
    };
    drop(first);
    log(2).await;
    // Two deprovisions, each counted once (the second in flight, its row left out): a third is
    // one too many.
    match weigh(3).await {
        EventGuard::Hold(reason) => assert!(reason.contains("3 accounts"), "{reason}"),
        EventGuard::Proceed(_) => panic!("a third deprovision passed max_count 2"),
    }
    drop(second);
    match weigh(3).await {
        EventGuard::Hold(reason) => assert!(reason.contains("3 accounts"), "{reason}"),
        EventGuard::Proceed(_) => panic!("a third deprovision passed max_count 2"),
    }
}

/// Only an admin's explicit approval releases deprovisions, and only those the guard held: an
/// app paused by hand while 8 leavers arrive, then resumed with an `apps:write` key, still
/// weighs them (2 go through, then the guard pauses it); `approve_deprovisions` needs `admin`
/// and a hold by the guard; the admin's approval lets the other 6 through.
#[tokio::test]
async fn a_resume_approves_held_deprovisions_only_when_an_admin_says_so() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let app_id = guarded_app(
        &app,
        &target,
        "approved",
        json!({"max_concurrency": 1,
                   "deletion_guard": {"max_count": 2, "max_fraction": 1.0,
                                      "on_events": true, "window_minutes": 60}}),
        ("a", "A", 12),
    )
    .await;
    let resume = format!("/api/v1/apps/{app_id}/resume");
    let writer = app.key(&["apps:write"]).await;

    app.request(
        "POST",
        &format!("/api/v1/apps/{app_id}/pause"),
        Some(&writer),
        Some(&json!({})),
    )
    .await
    .expect(200);
    let paused = app
        .get(&format!("/api/v1/apps/{app_id}/status"))
        .await
        .expect(200);
    assert_eq!(paused["paused_by"], "operator", "{paused}");
    // Nothing is held by the guard yet: there is nothing to approve.
    let detail = app
        .post(&resume, &json!({"approve_deprovisions": true}))
        .await
        .problem(409);
    assert!(detail.contains("paused by an operator"), "{detail}");
    post_leavers(&app, "al", "A", 8).await;
    // A resume without a body, by an `apps:write` key: not an approval.
    app.request("POST", &resume, Some(&writer), None)
        .await
        .expect(200);
    let status = paused_status(&app, &app_id).await;
    assert!(status.to_string().contains("deletion guard"), "{status}");
    assert_eq!(status["paused_by"], "guard", "{status}");
    // Held: the other six wait as pending jobs of the paused app, none still running (an
    // approval counts the deprovisions waiting when it is given: a state to reach first).
    eventually("the other six held", Duration::from_secs(30), || async {
        let jobs = app
            .rows(&format!(
                "SELECT state FROM job WHERE app_id = '{app_id}' AND state IN ('pending', 'running')"
            ))
            .await;
        (jobs.len() == 6 && jobs.iter().all(|j| j["state"] == "pending")).then_some(())
    })
    .await;
    assert_eq!(inactive_users(&target), 2, "the guard kept counting");

    // Approving takes an admin.
    app.request(
        "POST",
        &resume,
        Some(&writer),
        Some(&json!({"approve_deprovisions": true})),
    )
    .await
    .problem(403);
    assert_eq!(
        app.get(&format!("/api/v1/apps/{app_id}/status"))
            .await
            .expect(200)["state"],
        "paused"
    );
    let approved = app
        .post(&resume, &json!({"approve_deprovisions": true}))
        .await
        .expect(200);
    assert_eq!(approved["state"], "active");
    eventually(
        "all 8 leavers deactivated",
        Duration::from_secs(30),
        || async { (inactive_users(&target) == 8).then_some(()) },
    )
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    let audit = app
        .rows(&format!(
            "SELECT action FROM audit WHERE object_id = '{app_id}' ORDER BY id"
        ))
        .await;
    let actions: Vec<&str> = audit.iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(
        actions.ends_with(&["app.pause", "app.resume", "app.deprovisions_approved"]),
        "{actions:?}"
    );
    assert_eq!(
        app.get(&format!("/api/v1/apps/{app_id}/status"))
            .await
            .expect(200)["state"],
        "active"
    );
}

/// SCIM requests the dev-target has answered so far, all methods together.
fn requests_seen(target: &DevTarget) -> u64 {
    target.stats()["requests"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// Provision on demand respects the app's state: on a paused or quarantined app it is a 409
/// that says why, and the target sees no request at all.
#[tokio::test]
async fn provision_on_demand_is_refused_on_a_paused_or_quarantined_app() {
    let app = spawn_app_with_engine_off().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany(
            "pod-paused",
            &target.base_url(),
            TOKEN,
            json!({}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner("pp1", "PP1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let url = format!("/api/v1/apps/{app_id}/provision-on-demand");
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    let before = requests_seen(&target);
    let detail = app
        .post(&url, &json!({"identity_id": "PP1"}))
        .await
        .problem(409);
    assert!(detail.contains("paused"), "{detail}");
    use sea_orm::ConnectionTrait;
    app.db
        .execute_unprepared(&format!(
            "UPDATE app SET state = 'quarantined', state_reason = '401 on every call', \
             paused_by = NULL WHERE id = '{app_id}'"
        ))
        .await
        .expect("quarantine");
    let detail = app
        .post(&url, &json!({"identity_id": "PP1"}))
        .await
        .problem(409);
    assert!(detail.contains("quarantined"), "{detail}");
    assert_eq!(requests_seen(&target), before, "no SCIM request");
    assert!(target.users_snapshot().is_empty());
}

/// Never two deliveries of one resource in flight: while a job for the person runs, provision
/// on demand is a 409 and makes no call; a pending job for them is absorbed (done by the
/// on-demand delivery); a delete scheduled for later is left as it is.
#[tokio::test]
async fn provision_on_demand_never_runs_beside_a_job_for_the_same_person() {
    use sea_orm::ConnectionTrait;
    let app = spawn_app_with_engine_off().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("pod-busy", &target.base_url(), TOKEN, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner("pb1", "PB1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let id = identity_id(&app, "PB1").await;
    let url = format!("/api/v1/apps/{app_id}/provision-on-demand");
    let job_of = |state: &str| {
        format!(
            "SELECT id, run_at FROM job WHERE app_id = '{app_id}' AND resource_id = '{id}' \
             AND state = '{state}'"
        )
    };
    let queued = app.rows(&job_of("pending")).await;
    assert_eq!(queued.len(), 1, "the joiner's job");
    let job_id = queued[0]["id"].as_i64().unwrap_or_default();

    // Another worker (another instance) runs it now.
    let far = chrono::Utc::now().timestamp_millis() + 3_600_000;
    app.db
        .execute_unprepared(&format!(
            "UPDATE job SET state = 'running', lease_owner = 'elsewhere', lease_until = {far} \
             WHERE id = {job_id}"
        ))
        .await
        .expect("a running job");
    let before = requests_seen(&target);
    let detail = app
        .post(&url, &json!({"identity_id": "PB1"}))
        .await
        .problem(409);
    assert!(detail.contains("running"), "{detail}");
    assert_eq!(requests_seen(&target), before, "no SCIM request");

    // It is queued again: provision on demand does its work and closes it.
    app.db
        .execute_unprepared(&format!(
            "UPDATE job SET state = 'pending', lease_owner = NULL, lease_until = NULL \
             WHERE id = {job_id}"
        ))
        .await
        .expect("a pending job");
    let answer = app
        .post(&url, &json!({"identity_id": "PB1"}))
        .await
        .expect(200);
    assert_eq!(answer["operation"], "create", "{answer}");
    assert!(app.rows(&job_of("pending")).await.is_empty(), "absorbed");
    assert!(app.rows(&job_of("running")).await.is_empty(), "ended");

    // A delete scheduled for next year keeps its date.
    let next_year = chrono::Utc::now().timestamp_millis() + 365 * 86_400_000;
    app.db
        .execute_unprepared(&format!(
            "UPDATE job SET state = 'pending', run_at = {next_year} WHERE id = {job_id}"
        ))
        .await
        .expect("a scheduled job");
    let answer = app
        .post(&url, &json!({"identity_id": "PB1"}))
        .await
        .expect(200);
    assert_eq!(answer["operation"], "noop", "{answer}");
    let scheduled = app.rows(&job_of("pending")).await;
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0]["run_at"].as_i64(), Some(next_year));
}

/// A deprovision through provision on demand counts in the event-path deletion guard: with
/// `max_count 1`, the second one pauses the app (by the guard) and is not made.
#[tokio::test]
async fn provision_on_demand_deprovisions_pass_the_deletion_guard() {
    let app = spawn_app_with_engine_off().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany(
            "pod-guard",
            &target.base_url(),
            TOKEN,
            json!({"deletion_guard": {"max_count": 1, "max_fraction": 1.0,
                                      "on_events": true, "window_minutes": 60}}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    let url = format!("/api/v1/apps/{app_id}/provision-on-demand");
    for n in 1..=2 {
        let who = format!("PG{n}");
        app.post_event(&joiner(
            &format!("pg{n}"),
            &who,
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
        let answer = app
            .post(&url, &json!({"identity_id": who}))
            .await
            .expect(200);
        assert_eq!(answer["operation"], "create", "{answer}");
        app.post_event(&event(
            &format!("pgl{n}"),
            "leaver",
            &who,
            "2026-11-02T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    let first = app
        .post(&url, &json!({"identity_id": "PG1"}))
        .await
        .expect(200);
    assert_eq!(first["operation"], "deactivate", "{first}");
    let detail = app
        .post(&url, &json!({"identity_id": "PG2"}))
        .await
        .problem(409);
    assert!(detail.contains("deletion guard"), "{detail}");
    assert_eq!(
        inactive_users(&target),
        1,
        "the second deprovision was held"
    );
    let held = app
        .rows(&format!(
            "SELECT state, paused_by FROM app WHERE id = '{app_id}'"
        ))
        .await;
    assert_eq!(held[0]["state"], "paused");
    assert_eq!(held[0]["paused_by"], "guard");
}

/// Provision on demand writes its audit row in the transaction of its link: when the audit row
/// cannot be written, no link is stored either (the next job matches the account again).
#[tokio::test]
async fn provision_on_demand_stores_its_link_and_audit_row_together() {
    use sea_orm::ConnectionTrait;
    let app = spawn_app_with_engine_off().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("pod-audit", &target.base_url(), TOKEN, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner("pa1", "PA1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let pg = app.db.get_database_backend() == sea_orm::DbBackend::Postgres;
    let triggers: &[&str] = if pg {
        &[
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit FOR EACH ROW \
             WHEN (NEW.action = 'app.provision_on_demand') EXECUTE FUNCTION refuse_audit()",
        ]
    } else {
        &["CREATE TRIGGER refuse_audit BEFORE INSERT ON audit \
           WHEN NEW.action = 'app.provision_on_demand' \
           BEGIN SELECT RAISE(ABORT, 'injected failure'); END"]
    };
    for sql in triggers {
        app.db.execute_unprepared(sql).await.expect("a trigger");
    }
    let failed = app
        .post(
            &format!("/api/v1/apps/{app_id}/provision-on-demand"),
            &json!({"identity_id": "PA1"}),
        )
        .await;
    assert_eq!(failed.status, 500, "{}", failed.text);
    let links = app
        .rows(&format!("SELECT id FROM link WHERE app_id = '{app_id}'"))
        .await;
    assert!(links.is_empty(), "a link without its audit row: {links:?}");
}

/// The sum of every sample of `name` whose labels include all of `labels` (`k="v"` pairs);
/// `None` when no such series is exported.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let prefix = format!("{name}{{");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            let set = l.split_once('}').map_or("", |(s, _)| s);
            labels.iter().all(|want| set.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn scrape(app: &TestApp) -> String {
    app.request("GET", "/metrics", None, None).await.text
}

/// The alert on dead jobs reads `roster_sync_operations_total{outcome="dead"}`: a job the
/// target refuses with 400 moves it.
#[tokio::test]
async fn a_dead_letter_counts_in_the_dead_outcome_metric() {
    let app = spawn_app().await;
    let (base, stop) = refusing_target(400).await;
    app.create_app(&sherpany("cov-dead", &base, TOKEN, json!({})))
        .await;
    let labels = ["app=\"cov-dead\"", "outcome=\"dead\""];
    let before = metric_sum(&scrape(&app).await, "roster_sync_operations_total", &labels);
    assert_eq!(before.unwrap_or(0.0), 0.0, "no dead job yet");
    app.post_event(&joiner("cd1", "CD1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    eventually("a dead letter", Duration::from_secs(20), || async {
        let jobs = app.get("/api/v1/jobs?state=dead").await.body;
        (jobs["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    let after = metric_sum(&scrape(&app).await, "roster_sync_operations_total", &labels);
    assert_eq!(after, Some(1.0), "one dead job, counted once");
    stop.cancel();
}

/// The alert on leavers not deprovisioned reads `roster_queue_depth{lane="deprovision"}`:
/// leavers held by a paused app show there, and leave it once delivered.
#[tokio::test]
async fn leavers_held_by_a_paused_app_show_in_the_deprovision_queue_depth() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("cov-depth", &target.base_url(), TOKEN, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    post_joiners(&app, "qd-j", "QD", 3).await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    for i in 0..3 {
        app.post_event(&event(
            &format!("qd-l{i}"),
            "leaver",
            &format!("QD{i}"),
            "2026-11-02T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    let series = "roster_queue_depth{app=\"cov-depth\",lane=\"deprovision\"}";
    // The engine publishes the gauges every couple of seconds.
    eventually("three held leavers", Duration::from_secs(20), || async {
        (metric(&scrape(&app).await, series) == Some(3.0)).then_some(())
    })
    .await;
    app.post(&format!("/api/v1/apps/{app_id}/resume"), &json!({}))
        .await
        .expect(200);
    app.settled(&app_id, Duration::from_secs(20)).await;
    eventually(
        "the deprovision lane empty",
        Duration::from_secs(20),
        || async { (metric(&scrape(&app).await, series) == Some(0.0)).then_some(()) },
    )
    .await;
    assert!(
        target
            .users_snapshot()
            .iter()
            .all(|u| u["active"] == json!(false)),
        "all three deactivated"
    );
}

/// The SLO reads `roster_event_to_target_seconds`: a delivered joiner adds one sample to its
/// app's create series.
#[tokio::test]
async fn a_delivered_joiner_is_a_sample_of_event_to_target_seconds() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("cov-slo", &target.base_url(), TOKEN, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    let count = "roster_event_to_target_seconds_count{app=\"cov-slo\",operation=\"create\"}";
    assert_eq!(metric(&scrape(&app).await, count), None, "no sample yet");
    app.post_event(&joiner("slo1", "SLO1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    assert!(
        read_user(&target.base_url(), TOKEN, "slo1@example.com")
            .await
            .is_some()
    );
    let text = scrape(&app).await;
    assert_eq!(metric(&text, count), Some(1.0), "one sample for one joiner");
    let within_a_minute = metric(
        &text,
        "roster_event_to_target_seconds_bucket{app=\"cov-slo\",operation=\"create\",le=\"60\"}",
    );
    assert_eq!(within_a_minute, Some(1.0), "delivered within a minute");
}

/// Narrowing an app's scope deprovisions the accounts now outside it, and those deprovisions
/// pass the deletion guard like any other: past `max_count` the app pauses and the rest wait
/// for an admin's approval. The people still in scope are not touched.
#[tokio::test]
async fn narrowing_the_scope_deprovisions_those_outside_it_under_the_deletion_guard() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let staff: Vec<String> = (0..4).map(|i| format!("NS{i}")).collect();
    let contractors: Vec<String> = (0..5).map(|i| format!("NC{i}")).collect();
    app.post(
        "/api/v1/groups",
        &json!({"name": "staff", "members": staff}),
    )
    .await
    .expect(201);
    app.post(
        "/api/v1/groups",
        &json!({"name": "contractors", "members": contractors}),
    )
    .await
    .expect(201);
    let created = app
        .create_app(&sherpany(
            "cov-narrow",
            &target.base_url(),
            TOKEN,
            json!({"max_concurrency": 1,
                   "scope": {"groups": ["staff", "contractors"], "email_domains": ["example.com"]},
                   "deletion_guard": {"max_count": 2, "max_fraction": 1.0,
                                      "on_events": true, "window_minutes": 60}}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    for who in staff.iter().chain(&contractors) {
        app.post_event(&joiner(
            &format!("n-{who}"),
            who,
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    eventually("nine accounts", Duration::from_secs(30), || async {
        (target.stats()["users"] == 9).then_some(())
    })
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;

    app.patch(
        &format!("/api/v1/apps/{app_id}"),
        &json!({"scope": {"groups": ["staff"], "email_domains": ["example.com"]}}),
    )
    .await
    .expect(200);
    let inactive = |who: &[String]| {
        let users = target.users_snapshot();
        who.iter()
            .filter(|w| {
                let name = format!("{}@example.com", w.to_lowercase());
                user(&users, &name).is_some_and(|u| u["active"] == json!(false))
            })
            .count()
    };
    let status = paused_status(&app, &app_id).await;
    assert!(status.to_string().contains("deletion guard"), "{status}");
    // Held: the rest wait as pending jobs of the paused app (a state, not a window of time);
    // the re-sync's jobs for the people still in scope may wait beside them.
    eventually("the other three held", Duration::from_secs(30), || async {
        let jobs = app
            .rows(&format!(
                "SELECT state FROM job WHERE app_id = '{app_id}' AND state IN ('pending', 'running')"
            ))
            .await;
        (jobs.len() >= 3 && jobs.iter().all(|j| j["state"] == "pending")).then_some(())
    })
    .await;
    assert_eq!(
        inactive(&contractors),
        2,
        "max_count deprovisions went through"
    );
    assert_eq!(
        inactive(&staff),
        0,
        "the people still in scope are untouched"
    );

    app.post(
        &format!("/api/v1/apps/{app_id}/resume"),
        &json!({"approve_deprovisions": true}),
    )
    .await
    .expect(200);
    app.settled(&app_id, Duration::from_secs(30)).await;
    assert_eq!(inactive(&contractors), 5, "everyone outside the scope");
    assert_eq!(
        inactive(&staff),
        0,
        "the people still in scope are untouched"
    );
    assert_eq!(target.stats()["users"], 9, "deactivated, not deleted");
}

/// A changed mapping reaches the target for the accounts that exist already: `title` now comes
/// from the family name, and the account is updated in place, not created again.
#[tokio::test]
async fn a_changed_mapping_reaches_existing_accounts() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let created = app
        .create_app(&sherpany("cov-remap", &target.base_url(), TOKEN, json!({})))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner(
        "rm1",
        "RM1",
        "2026-11-01T09:00:00Z",
        json!({"given_name": "Ada", "family_name": "Lovelace", "title": "Engineer"}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let before = read_user(&target.base_url(), TOKEN, "rm1@example.com")
        .await
        .expect("the account");
    assert_eq!(before["title"], "Engineer");

    app.patch(
        &format!("/api/v1/apps/{app_id}"),
        &json!({"mappings": [
            {"target": "userName", "source": "email"},
            {"target": "name.givenName", "source": "given_name"},
            {"target": "name.familyName", "source": "family_name"},
            {"target": "emails[type eq \"work\"].value", "source": "email"},
            {"target": "title", "source": "family_name"},
            {"target": "externalId", "source": "employee_id"}
        ]}),
    )
    .await
    .expect(200);
    let after = eventually(
        "the new mapping applied",
        Duration::from_secs(20),
        || async {
            read_user(&target.base_url(), TOKEN, "rm1@example.com")
                .await
                .filter(|u| u["title"] == "Lovelace")
        },
    )
    .await;
    assert_eq!(after["id"], before["id"], "updated in place");
    assert_eq!(target.stats()["users"], 1, "not created again");
}

/// `delete_after_days > 0`: once the date comes (moved into the past through SQL, for the
/// queued job and the link alike), the scheduled delete runs: one DELETE, the account gone
/// from the target, no job left waiting.
#[tokio::test]
async fn a_scheduled_delete_runs_on_its_date() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let (app_id, id, _) = leaver_with_scheduled_delete(&app, &target, "cov-due", "SD3").await;
    assert_eq!(
        target.stats()["users"],
        1,
        "deactivated, kept until its date"
    );
    make_delete_due(&app, &app_id, &id).await;
    eventually("the account deleted", Duration::from_secs(20), || async {
        (target.stats()["users"] == 0).then_some(())
    })
    .await;
    due_settled(&app, &app_id).await;
    assert_eq!(
        pending_user_jobs(&app, &app_id, &id).await,
        [],
        "nothing waits any more"
    );
    let deletes = app
        .rows(&format!(
            "SELECT status FROM operation WHERE app_id = '{app_id}' AND method = 'DELETE'"
        ))
        .await;
    assert_eq!(deletes.len(), 1, "one DELETE: {deletes:?}");
    let metrics = scrape(&app).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "roster_sync_operations_total",
            &[
                "app=\"cov-due\"",
                "operation=\"delete\"",
                "outcome=\"succeeded\""
            ]
        ),
        Some(1.0)
    );
}

/// A scheduled delete was decided when the leaver was deactivated, days before it runs: the
/// account is read again first. Renamed into a partner's domain or handed to a colleague by
/// hand meanwhile, it is not deleted (the job ends dead, saying why); gone already, the link
/// says so and no DELETE is sent.
#[tokio::test]
async fn a_scheduled_delete_reads_the_account_again_before_it_deletes() {
    use roster::dev_target::Kind;
    let app = spawn_app().await;
    let cases = [
        (
            "sd-partner",
            "SD4",
            Some("sd4@partner.org"),
            "managed domains",
        ),
        (
            "sd-colleague",
            "SD5",
            Some("colleague@example.com"),
            "no longer holds",
        ),
        ("sd-gone", "SD6", None, ""),
    ];
    for (name, emp, renamed, reason) in cases {
        let target = target_with(DevTargetArgs::default()).await;
        let (app_id, id, _) = leaver_with_scheduled_delete(&app, &target, name, emp).await;
        let account = target.users_snapshot()[0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match renamed {
            Some(user_name) => assert!(target.edit(Kind::User, &account, |u| {
                u["userName"] = json!(user_name);
            })),
            None => target.reset(),
        }
        make_delete_due(&app, &app_id, &id).await;
        due_settled(&app, &app_id).await;

        let deletes = app
            .rows(&format!(
                "SELECT status FROM operation WHERE app_id = '{app_id}' AND method = 'DELETE'"
            ))
            .await;
        assert_eq!(deletes, Vec::<Value>::new(), "{name}: no DELETE sent");
        let jobs = app
            .rows(&format!(
                "SELECT state, last_error FROM job WHERE app_id = '{app_id}' AND resource_id = '{id}'"
            ))
            .await;
        let link = app
            .rows(&format!(
                "SELECT state FROM link WHERE app_id = '{app_id}' AND resource_id = '{id}'"
            ))
            .await;
        if renamed.is_some() {
            assert_eq!(target.users_snapshot().len(), 1, "{name}: the account kept");
            assert!(
                jobs.iter().any(|j| j["state"] == "dead"
                    && j["last_error"].as_str().is_some_and(|e| e.contains(reason))),
                "{name}: the job says why: {jobs:?}"
            );
            assert_eq!(link[0]["state"], "deactivated", "{name}: {link:?}");
        } else {
            assert_eq!(link[0]["state"], "deleted", "{name}: {link:?}");
            assert!(
                jobs.iter().all(|j| j["state"] == "done"),
                "{name}: {jobs:?}"
            );
        }
    }
}

/// HR often changes a leaver's address at termination: the scheduled delete still deletes the
/// account roster deactivated, which holds the address roster last wrote, not the new one.
#[tokio::test]
async fn a_scheduled_delete_deletes_a_leaver_whose_address_changed_after_leaving() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let (app_id, id, _) = leaver_with_scheduled_delete(&app, &target, "sd-moved", "SD7").await;
    app.post_event(&event(
        "m-SD7",
        "mover",
        "SD7",
        "2026-11-03T09:00:00Z",
        json!({"email": "former.sd7@example.com"}),
    ))
    .await;
    due_settled(&app, &app_id).await;
    make_delete_due(&app, &app_id, &id).await;
    eventually("the account deleted", Duration::from_secs(20), || async {
        (target.stats()["users"] == 0).then_some(())
    })
    .await;
}

/// Issue 16: a target that requires an attribute on create (its quirks say which) never gets
/// a create without it: the person's job is dead at once, naming the attribute, and the target
/// sees no POST; and an app whose mappings could never render it, or that renders two values
/// of an attribute the target takes one of, is refused when it is written.
#[tokio::test]
async fn required_and_single_valued_attributes_are_checked_before_the_target_refuses() {
    let app = spawn_app().await;
    let target = target_with(DevTargetArgs::default()).await;
    let quirks = json!({"required_on_create": ["userName", "title"], "single_valued": ["emails"]});

    let two_emails = sherpany(
        "two-emails",
        &target.base_url(),
        TOKEN,
        json!({"quirks": quirks, "mappings": [
            {"target": "userName", "source": "email"},
            {"target": "title", "source": "title"},
            {"target": "emails[type eq \"work\"].value", "source": "email"},
            {"target": "emails[type eq \"home\"].value", "source": "email"}]}),
    );
    let detail = app.post("/api/v1/apps", &two_emails).await.problem(422);
    assert!(detail.contains("one `emails` value"), "{detail}");
    let no_title = sherpany(
        "no-title",
        &target.base_url(),
        TOKEN,
        json!({"quirks": quirks, "mappings": [{"target": "userName", "source": "email"}]}),
    );
    let detail = app.post("/api/v1/apps", &no_title).await.problem(422);
    assert!(detail.contains("requires `title` on create"), "{detail}");
    let apps = app.get("/api/v1/apps").await.expect(200);
    assert_eq!(apps["items"].as_array().map_or(0, Vec::len), 0, "{apps}");

    let created = app
        .create_app(&sherpany(
            "needs-title",
            &target.base_url(),
            TOKEN,
            json!({"quirks": quirks}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    // No title from HR: the mapping renders none.
    app.post_event(&joiner("nt1", "NT1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let dead = first_dead_letter(&app).await;
    assert_eq!(dead["app_id"], app_id.as_str());
    assert_eq!(dead["attempts"], 1, "not retried: {dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("requires `title` on create")),
        "{dead}"
    );
    assert_eq!(target.stats()["requests"]["POST"], Value::Null, "no POST");
    assert!(target.users_snapshot().is_empty());
}
