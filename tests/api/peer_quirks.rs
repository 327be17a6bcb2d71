//! Connector quirks proven against `scim2-server`, a SCIM server nobody here wrote, as well as
//! against roster's own emulations: the quirk is set on an app pointed at the peer, the engine
//! does the work, and the outcome is read back from the peer over plain HTTP (not through
//! roster's client), so a bug shared by roster's client and its dev-target cannot hide it.
//! Run under `../shared/peers/with-peer.sh scim2-server`.
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    PeerTurn, TestApp, app_body, eventually, joiner, member_ids, peer, spawn_app,
};

const WAIT: Duration = Duration::from_secs(60);

/// The peer for one test (`None`: skipped, no peer): its HTTP API, a tag that keeps the test's
/// names apart from other tests' on the shared peer, and the turn that runs peer tests one at a
/// time.
async fn on_peer() -> Option<(Peer, String, PeerTurn)> {
    let (base, token, turn) = peer().await?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    Some((Peer::new(&base, &token), tag, turn))
}

/// The peer as its own HTTP API shows it.
struct Peer {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Peer {
    fn new(base: &str, token: &str) -> Self {
        // This client may be the test's first (before the app under test installs it).
        roster::scim::install_crypto_provider();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The same peer through a relay that records each call in `seen`.
    async fn relayed(&self, seen: std::sync::Arc<Seen>) -> Self {
        Self::new(&crate::helpers::relay(&self.base, seen).await, &self.token)
    }

    /// One call; its status and JSON body (`Null` when there is none, as on a 204).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(15));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let answer = request.send().await.expect("the peer answers");
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, &[], None).await
    }

    /// POSTs `body` to `/{kind}`; the created resource.
    async fn create(&self, kind: &str, body: &Value) -> Value {
        let (status, created) = self
            .send(reqwest::Method::POST, &format!("/{kind}"), &[], Some(body))
            .await;
        assert_eq!(status, 201, "{kind} created on the peer: {created}");
        created
    }

    /// Every resource of `kind` (`Users`, `Groups`), paged until `totalResults`.
    async fn all(&self, kind: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let start = (all.len() + 1).to_string();
            let (status, page) = self
                .send(
                    reqwest::Method::GET,
                    &format!("/{kind}"),
                    &[("startIndex", start.as_str()), ("count", "1000")],
                    None,
                )
                .await;
            assert_eq!(status, 200, "{page}");
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            let total = page["totalResults"].as_u64().expect("totalResults");
            let empty = resources.is_empty();
            all.extend(resources);
            if empty || all.len() as u64 >= total {
                return all;
            }
        }
    }

    /// The groups whose `displayName` is `name` (by the peer's own filter).
    async fn groups_named(&self, name: &str) -> Vec<Value> {
        let filter = format!("displayName eq \"{name}\"");
        let (status, page) = self
            .send(
                reqwest::Method::GET,
                "/Groups",
                &[("filter", filter.as_str())],
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["Resources"].as_array().cloned().unwrap_or_default()
    }

    /// Renames group `id` by hand, as an administrator of the target would.
    async fn rename_group(&self, id: &str, name: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::PATCH,
                &format!("/Groups/{id}"),
                &[],
                Some(&json!({
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "replace", "value": {"displayName": name}}],
                })),
            )
            .await;
        assert!(status == 200 || status == 204, "{status} {body}");
    }
}

fn id_of(resource: &Value) -> String {
    resource["id"].as_str().expect("an id").to_owned()
}

/// An app on the peer mapping the HR email to `userName`, with `quirks` over the RFC's and
/// `extra` settings; no scheduled reconciliation. Returns its id.
async fn app_on_peer(
    app: &TestApp,
    name: &str,
    peer: &Peer,
    quirks: Value,
    extra: Value,
) -> String {
    let mut body = app_body(
        name,
        json!({
            "base_url": peer.base,
            "auth": {"type": "bearer", "token": peer.token},
            "rate_limit": {"per_second": 50, "burst": 50},
            // The peer has a listen backlog of 5 and closes every connection.
            "max_concurrency": 2,
            "timeout_ms": 15000,
            "quirks": quirks,
            "reconcile": {"interval_minutes": 0, "mode": "report"},
            "mappings": [
                {"target": "userName", "source": "email"},
                {"target": "emails[type eq \"work\"].value", "source": "email"},
                {"target": "externalId", "source": "employee_id"}
            ],
        }),
    );
    crate::helpers::merge(&mut body, &extra);
    app.create_app(&body).await["id"]
        .as_str()
        .expect("the app's id")
        .to_owned()
}

/// Posts a joiner for each `(employee_id, email)`, in one batch.
async fn post_joiners(app: &TestApp, tag: &str, people: &[(String, String)]) {
    let events: Vec<Value> = people
        .iter()
        .enumerate()
        .map(|(i, (employee, email))| {
            joiner(
                &format!("{tag}-j{i}"),
                employee,
                "2026-11-01T09:00:00Z",
                json!({"email": email}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": events}))
        .await
        .expect(202);
}

/// The peer's account of `email` (its `userName`, compared ignoring case, as the peer does):
/// every account of that name.
fn accounts_of<'a>(users: &'a [Value], email: &str) -> Vec<&'a Value> {
    users
        .iter()
        .filter(|u| {
            u["userName"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(email))
        })
        .collect()
}

/// The app's link of the pushed group: `(target_id, snapshot)`.
async fn group_link(app: &TestApp, app_id: &str) -> (String, Value) {
    let rows = app
        .rows(&format!(
            "SELECT target_id, snapshot FROM link WHERE app_id = '{app_id}' AND resource_kind = 'group'"
        ))
        .await;
    assert_eq!(rows.len(), 1, "one group link: {rows:?}");
    let snapshot = match &rows[0]["snapshot"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
        other => other.clone(),
    };
    (
        rows[0]["target_id"].as_str().unwrap_or_default().to_owned(),
        snapshot,
    )
}

/// The errors of the app's dead jobs.
async fn dead_errors(app: &TestApp, app_id: &str) -> Vec<Value> {
    app.rows(&format!(
        "SELECT last_error FROM job WHERE app_id = '{app_id}' AND state = 'dead'"
    ))
    .await
}

/// A reconcile run of the app in fix mode, waited for, then the app settled.
async fn reconcile_fix(app: &TestApp, app_id: &str) -> Value {
    let report = app.reconcile_run(app_id, json!({"mode": "fix"})).await;
    app.settled(app_id, WAIT).await;
    report
}

/// What a pushed group renamed by hand on the peer became.
struct Replaced {
    /// The peer's group of that id before the rename.
    old_id: String,
    /// The group of roster's name on the peer now (exactly one).
    now: Value,
    /// The members' account ids on the peer.
    members: Vec<String>,
    app: TestApp,
    app_id: String,
}

/// Issue 16: roster group `board-{tag}` with two members pushed to the peer by an app whose
/// quirks say the target cannot rename groups (`group_rename: false`), although the peer
/// can; the group is renamed by hand on the peer and a reconcile run in fix mode brings it
/// back to roster's name. With `adopt`, a group of roster's name existed on the peer before
/// the app pushed it (roster adopts it instead of creating one).
async fn pushed_group_renamed_on_the_peer(peer: &Peer, tag: &str, adopt: bool) -> Replaced {
    let app = spawn_app().await;
    let group = format!("board-{tag}");
    let renamed = format!("renamed-{tag}");
    let people: Vec<(String, String)> = (1..=2)
        .map(|i| (format!("R{tag}{i}"), format!("r{tag}{i}@example.com")))
        .collect();
    let adopted = if adopt {
        Some(id_of(
            &peer
                .create(
                    "Groups",
                    &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                            "displayName": group}),
                )
                .await,
        ))
    } else {
        None
    };
    let employees: Vec<&String> = people.iter().map(|(e, _)| e).collect();
    app.post(
        "/api/v1/groups",
        &json!({"name": group, "members": employees}),
    )
    .await
    .expect(201);
    let app_id = app_on_peer(
        &app,
        &format!("rename-{tag}"),
        peer,
        json!({"group_rename": false}),
        json!({"group_push": [group]}),
    )
    .await;
    post_joiners(&app, tag, &people).await;
    let users = eventually("both accounts on the peer", WAIT, || async {
        let users = peer.all("Users").await;
        let mut ids = Vec::new();
        for (_, email) in &people {
            let [one] = accounts_of(&users, email)[..] else {
                return None;
            };
            ids.push(id_of(one));
        }
        ids.sort();
        Some(ids)
    })
    .await;
    let old = eventually("the group pushed with both members", WAIT, || async {
        app.settled(&app_id, WAIT).await;
        let [one] = &peer.groups_named(&group).await[..] else {
            return None;
        };
        (member_ids(one) == users).then(|| one.clone())
    })
    .await;
    let old_id = id_of(&old);
    if let Some(adopted) = &adopted {
        assert_eq!(*adopted, old_id, "the peer's own group was adopted");
    }
    assert_eq!(group_link(&app, &app_id).await.0, old_id);

    // roster refuses to rename a group an app pushes by name, so the names part on the peer.
    let roster_group = app.get("/api/v1/groups").await.expect(200)["items"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.patch(
        &format!("/api/v1/groups/{roster_group}"),
        &json!({"name": renamed}),
    )
    .await
    .expect(409);
    peer.rename_group(&old_id, &renamed).await;
    let report = reconcile_fix(&app, &app_id).await;
    assert_eq!(report["groups"]["drifted"], 1, "{report}");
    let dead = dead_errors(&app, &app_id).await;
    assert!(dead.is_empty(), "{dead:?}");

    let now = match &peer.groups_named(&group).await[..] {
        [one] => one.clone(),
        other => panic!("one group named {group} on the peer: {other:?}"),
    };
    let (linked, snapshot) = group_link(&app, &app_id).await;
    assert!(snapshot.get("replaces").is_none(), "{snapshot}");
    // Either way: a new group of roster's name with both members, and the link names it.
    assert_ne!(id_of(&now), old_id, "a new group, not a rename: {now}");
    assert_eq!(member_ids(&now), users, "{now}");
    assert_eq!(linked, id_of(&now));
    Replaced {
        old_id,
        now,
        members: users,
        app,
        app_id,
    }
}

impl Replaced {
    /// The next fix run finds roster's group in sync and writes nothing.
    async fn second_run_writes_nothing(&self) {
        let again = reconcile_fix(&self.app, &self.app_id).await;
        assert_eq!(again["groups"]["in_sync"], 1, "{again}");
        assert_eq!(again["writes"], 0, "{again}");
    }
}

/// A pushed group roster created, renamed by hand on the peer, where the app's quirks say the
/// target cannot rename: a new group of roster's name holds both members, the old group is
/// deleted (roster created it), and the link names the new group. A second run writes nothing.
#[tokio::test]
async fn a_renamed_group_roster_created_is_replaced_on_the_third_party_peer() {
    let Some((peer, tag, _turn)) = on_peer().await else {
        return;
    };
    let r = pushed_group_renamed_on_the_peer(&peer, &tag, false).await;
    let roster_group = r.app.get("/api/v1/groups").await.expect(200)["items"][0]["id"].clone();
    assert_eq!(
        r.now["externalId"], roster_group,
        "created by roster: {}",
        r.now
    );
    let (status, old) = peer.get(&format!("/Groups/{}", r.old_id)).await;
    assert_eq!(status, 404, "the old group is deleted: {old}");
    assert!(
        peer.groups_named(&format!("renamed-{tag}"))
            .await
            .is_empty()
    );
    r.second_run_writes_nothing().await;
}

/// The same where the group was the peer's before roster pushed it (adopted): roster creates
/// its group with both members and only unlinks the old one, which stays as it is, renamed
/// and with its members; the next run writes nothing and leaves it there.
#[tokio::test]
async fn a_renamed_group_roster_adopted_is_left_in_place_on_the_third_party_peer() {
    let Some((peer, tag, _turn)) = on_peer().await else {
        return;
    };
    let r = pushed_group_renamed_on_the_peer(&peer, &tag, true).await;
    let (status, old) = peer.get(&format!("/Groups/{}", r.old_id)).await;
    assert_eq!(status, 200, "the adopted group stays: {old}");
    assert_eq!(old["displayName"], format!("renamed-{tag}"), "{old}");
    assert_eq!(member_ids(&old), r.members, "left with its members: {old}");
    r.second_run_writes_nothing().await;
    let (status, _) = peer.get(&format!("/Groups/{}", r.old_id)).await;
    assert_eq!(status, 200);
}

/// Records the calls passing a [`crate::helpers::relay`] as `(method, path, query)`: what
/// reached the peer, once each (the provisioning log repeats a look-up shared by several jobs
/// on each job's row).
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<(String, String, String)>>);

impl crate::helpers::Tap for Seen {
    async fn request(&self, call: &mut crate::helpers::RelayedCall) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&call.query)
            .finish();
        if let Ok(mut seen) = self.0.lock() {
            seen.push((call.method.clone(), call.path.clone(), query));
        }
    }
}

impl Seen {
    fn all(&self) -> Vec<(String, String, String)> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn clear(&self) {
        if let Ok(mut seen) = self.0.lock() {
            seen.clear();
        }
    }

    /// The PATCHes of one resource that reached the peer.
    fn patches_of(&self, path_end: &str) -> usize {
        self.all()
            .iter()
            .filter(|(m, p, _)| m == "PATCH" && p.ends_with(path_end))
            .count()
    }
}

/// Issue 16: six joiners claimed together by an app whose look-ups cannot share an `or`
/// filter (`filter_or: false`), so that one read of the peer's whole user listing costs fewer
/// calls than six look-ups (`lookups::plan`). One of them has an account on the peer already,
/// made by hand with its `userName` in capitals: it is found in the listing (compared ignoring
/// case, as the peer compares) and adopted with its id, never created again (not even a
/// create the peer refuses as a duplicate); the others get exactly one account each, and
/// every other account on the peer, another company's included, is left exactly as it was.
#[tokio::test]
async fn joiners_looked_up_by_listing_the_third_party_peer_adopt_without_a_duplicate() {
    let Some((peer, tag, _turn)) = on_peer().await else {
        return;
    };
    let people: Vec<(String, String)> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|x| (format!("L{tag}{x}"), format!("l{tag}-{x}@example.com")))
        .collect();
    let user = |name: &str| {
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
               "emails": [{"type": "work", "value": name, "primary": true}], "active": true})
    };
    let made_by_hand = peer
        .create("Users", &user(&people[2].1.to_uppercase()))
        .await;
    let other_company = peer
        .create("Users", &user(&format!("l{tag}-c@othercorp.test")))
        .await;
    let before = peer.all("Users").await;
    let groups_before = peer.all("Groups").await;

    let app = spawn_app().await;
    let seen = std::sync::Arc::new(Seen::default());
    let through = peer.relayed(seen.clone()).await;
    let app_id = app_on_peer(
        &app,
        &format!("listing-{tag}"),
        &through,
        // 1000: the peer's largest page, so that its whole listing is one call.
        json!({"filter_or": false, "page_size": 1000}),
        json!({}),
    )
    .await;
    post_joiners(&app, &tag, &people).await;
    app.settled(&app_id, WAIT).await;
    let dead = dead_errors(&app, &app_id).await;
    assert!(dead.is_empty(), "{dead:?}");

    let after = peer.all("Users").await;
    for (_, email) in &people {
        let found = accounts_of(&after, email);
        assert_eq!(found.len(), 1, "one account of {email}: {found:?}");
    }
    let adopted = accounts_of(&after, &people[2].1)[0];
    assert_eq!(adopted["id"], made_by_hand["id"], "adopted: {adopted}");
    // Every account that was there, but the adopted one, is untouched (`meta.version` too).
    for was in before.iter().filter(|u| u["id"] != made_by_hand["id"]) {
        let now = after.iter().find(|u| u["id"] == was["id"]);
        assert_eq!(now, Some(was), "left as it was");
    }
    assert!(before.contains(&other_company), "{other_company}");
    let new: Vec<&Value> = after
        .iter()
        .filter(|u| !before.iter().any(|b| b["id"] == u["id"]))
        .collect();
    assert_eq!(new.len(), people.len() - 1, "five created: {new:?}");
    assert_eq!(peer.all("Groups").await, groups_before, "no group touched");

    let calls = seen.all();
    let user_reads = |filtered: bool| {
        calls
            .iter()
            .filter(|(m, p, q)| {
                m == "GET" && p.ends_with("/Users") && q.contains("filter=") == filtered
            })
            .count()
    };
    let (listings, look_ups) = (user_reads(false), user_reads(true));
    assert!(listings >= 1, "the peer's listing was read: {calls:?}");
    assert!(
        listings + look_ups < people.len(),
        "fewer reads than joiners: {calls:?}"
    );
    let posts = calls.iter().filter(|(m, _, _)| m == "POST").count();
    assert_eq!(posts, people.len() - 1, "no create for C: {calls:?}");
}

/// Issue 16: `max_members_per_patch` against the peer. Seven people join a pushed group at
/// once and five leave it at once, on an app allowed three member changes per PATCH: the peer
/// receives three PATCHes for the seven adds and two for the five removals (counted at a
/// relay), and its group holds exactly roster's members after each.
#[tokio::test]
async fn member_changes_are_split_into_patches_of_max_members_on_the_third_party_peer() {
    let Some((peer, tag, _turn)) = on_peer().await else {
        return;
    };
    let group = format!("wide-{tag}");
    let people: Vec<(String, String)> = (1..=7)
        .map(|i| (format!("W{tag}{i}"), format!("w{tag}-{i}@example.com")))
        .collect();
    let app = spawn_app().await;
    let roster_group = app
        .post("/api/v1/groups", &json!({"name": group, "members": []}))
        .await
        .expect(201)["id"]
        .as_str()
        .expect("the group's id")
        .to_owned();
    let seen = std::sync::Arc::new(Seen::default());
    let through = peer.relayed(seen.clone()).await;
    let app_id = app_on_peer(
        &app,
        &format!("wide-{tag}"),
        &through,
        json!({"max_members_per_patch": 3}),
        json!({"group_push": [group]}),
    )
    .await;
    post_joiners(&app, &tag, &people).await;
    app.settled(&app_id, WAIT).await;
    let users = peer.all("Users").await;
    let ids: Vec<String> = people
        .iter()
        .map(|(_, email)| match accounts_of(&users, email)[..] {
            [one] => id_of(one),
            ref other => panic!("one account of {email}: {other:?}"),
        })
        .collect();
    let group_id = match &peer.groups_named(&group).await[..] {
        [one] => id_of(one),
        other => panic!("the empty group pushed: {other:?}"),
    };
    let members_on_peer = || async {
        let (status, read) = peer.get(&format!("/Groups/{group_id}")).await;
        assert_eq!(status, 200, "{read}");
        member_ids(&read)
    };
    assert!(members_on_peer().await.is_empty());

    let employees: Vec<&String> = people.iter().map(|(e, _)| e).collect();
    // Seven adds, then five removals.
    for (wanted, changes, patches) in [(&employees[..], 7, 3), (&employees[..2], 5, 2)] {
        seen.clear();
        app.patch(
            &format!("/api/v1/groups/{roster_group}"),
            &json!({"members": wanted}),
        )
        .await
        .expect(200);
        app.settled(&app_id, WAIT).await;
        let mut expected: Vec<String> = ids[..wanted.len()].to_vec();
        expected.sort();
        assert_eq!(members_on_peer().await, expected);
        assert_eq!(
            seen.patches_of(&format!("/Groups/{group_id}")),
            patches,
            "{changes} member changes, three per PATCH: {:?}",
            seen.all()
        );
    }
    let dead = dead_errors(&app, &app_id).await;
    assert!(dead.is_empty(), "{dead:?}");
}
