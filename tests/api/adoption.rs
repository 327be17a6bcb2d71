//! Matching and adoption against targets that misbehave, each in one way (a scripted stub on
//! port 0): one that ignores `filter=`, one that sends numeric ids, one that lower-cases
//! e-mail addresses. roster must change no account wrongly (refusing with a clear reason is
//! fine) and reach a correct end state. Also: an account linked to another identity is never
//! adopted, and the provisioning log keeps no e-mail address in its look-up paths.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::{Method, StatusCode};
use poem::{Request, Response};
use roster::scim::filter;
use serde_json::{Value, json};

use crate::helpers::{TestApp, app_body, event, eventually, joiner, spawn_app, spawn_app_with};

const TOKEN: &str = "stub-token";

/// How a stub target misbehaves.
#[derive(Debug, Clone, Copy, Default)]
struct Misbehaviour {
    /// Answers every listing with every resource, whatever `filter=` asks.
    ignores_filter: bool,
    /// Sends `id` as a JSON number.
    numeric_ids: bool,
    /// Stores `emails[].value` lower-cased.
    lower_cases_emails: bool,
    /// Creates a second account with a userName already taken, instead of answering 409
    /// (many SaaS targets do not enforce uniqueness).
    allows_duplicates: bool,
    /// Holds every POST until [`Stub::release_posts`].
    holds_posts: bool,
    /// Leaves the first user out of every unfiltered listing of users, its `totalResults`
    /// still counting it (a relay that loses an account).
    drops_from_listing: bool,
    /// Says one user more in `totalResults` of an unfiltered listing of users than it holds.
    overstates_listing_total: bool,
    /// Makes the first group it is asked to create, and answers that POST 502 (the answer
    /// lost on the way).
    loses_first_group_create_answer: bool,
}

/// One request as the stub saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// The query string, decoded.
    query: String,
}

/// A small SCIM server holding users and groups in memory, misbehaving as told.
struct Stub {
    how: Misbehaviour,
    users: Mutex<Vec<Value>>,
    groups: Mutex<Vec<Value>>,
    seen: Mutex<Vec<Seen>>,
    next_id: AtomicU64,
    /// Set once held POSTs may go on.
    posts_released: tokio::sync::watch::Sender<bool>,
    /// While set, a group PATCH that removes members is answered 503, nothing applied.
    failing_member_removals: std::sync::atomic::AtomicBool,
    /// Answer every PATCH of a group that adds a member 503.
    failing_member_adds: std::sync::atomic::AtomicBool,
    /// Set once a group create's answer was lost (`loses_first_group_create_answer`).
    group_create_answer_lost: std::sync::atomic::AtomicBool,
}

fn scim(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/scim+json")
        .body(body.to_string())
}

fn error(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({"schemas": [roster::scim::schemas::ERROR],
                          "status": status.as_u16().to_string(), "detail": detail});
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    scim(status, &body)
}

fn id_text(resource: &Value) -> String {
    match &resource["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Applies the PatchOp operations the client sends (top-level and dotted paths, whole
/// multi-valued attributes, member adds and filtered member removes).
fn apply_patch(resource: &mut Value, body: &Value) {
    for op in body["Operations"].as_array().into_iter().flatten() {
        let kind = op["op"].as_str().unwrap_or("").to_ascii_lowercase();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match op["path"].as_str() {
            None => {
                if let (Some(target), Some(fields)) = (resource.as_object_mut(), value.as_object())
                {
                    for (k, v) in fields {
                        target.insert(k.clone(), v.clone());
                    }
                }
            }
            Some(path) if path.starts_with("members[") => {
                let gone = filter::parse(&path["members[".len()..path.len() - 1]).ok();
                if let (Some(gone), Some(members)) = (gone, resource["members"].as_array_mut()) {
                    members.retain(|m| !gone.matches(m));
                }
            }
            Some("members") if kind == "add" => {
                let members = resource
                    .as_object_mut()
                    .map(|o| o.entry("members").or_insert_with(|| json!([])));
                if let (Some(Value::Array(members)), Some(new)) = (members, value.as_array()) {
                    members.extend(new.iter().cloned());
                }
            }
            Some(path) => {
                let mut parts: Vec<&str> = path.split('.').collect();
                let last = parts.pop().unwrap_or_default();
                let mut at = &mut *resource;
                for p in parts {
                    at = &mut at[p];
                    if at.is_null() {
                        *at = json!({});
                    }
                }
                if let Some(object) = at.as_object_mut() {
                    if kind == "remove" {
                        object.remove(last);
                    } else {
                        object.insert(last.to_owned(), value);
                    }
                }
            }
        }
    }
}

/// What a target that lower-cases e-mail addresses does: every `emails[].value`, and a
/// `userName` that is an address, stored lower-cased.
fn lower_case_emails(resource: &mut Value) {
    for e in resource["emails"].as_array_mut().into_iter().flatten() {
        if let Some(v) = e["value"].as_str() {
            e["value"] = json!(v.to_lowercase());
        }
    }
    if let Some(name) = resource["userName"].as_str().filter(|n| n.contains('@')) {
        resource["userName"] = json!(name.to_lowercase());
    }
}

impl Stub {
    fn new(how: Misbehaviour) -> Arc<Self> {
        Arc::new(Self {
            how,
            users: Mutex::new(Vec::new()),
            groups: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(100),
            posts_released: tokio::sync::watch::channel(false).0,
            failing_member_removals: std::sync::atomic::AtomicBool::new(false),
            failing_member_adds: std::sync::atomic::AtomicBool::new(false),
            group_create_answer_lost: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Lets held POSTs (`holds_posts`) go on, and the later ones through at once.
    fn release_posts(&self) {
        self.posts_released.send_replace(true);
    }

    /// Waits here while POSTs are held.
    async fn hold_post(&self) {
        if self.how.holds_posts {
            let mut released = self.posts_released.subscribe();
            let _ = released.wait_for(|released| *released).await;
        }
    }

    /// Stores `resource` as the target would and returns it as sent back.
    fn store(&self, kind: &str, mut resource: Value) -> Value {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        resource["id"] = if self.how.numeric_ids {
            json!(n)
        } else {
            json!(format!("{kind}-{n}"))
        };
        if self.how.lower_cases_emails {
            lower_case_emails(&mut resource);
        }
        let list = if kind == "g" {
            &self.groups
        } else {
            &self.users
        };
        list.lock().unwrap().push(resource.clone());
        resource
    }

    fn users(&self) -> Vec<Value> {
        self.users.lock().unwrap().clone()
    }

    fn groups(&self) -> Vec<Value> {
        self.groups.lock().unwrap().clone()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `"METHOD path"` of every write (POST, PATCH, PUT, DELETE).
    fn writes(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "GET")
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    fn answer(&self, method: &Method, path: &str, query: &str, body: &Value) -> Response {
        let segments: Vec<&str> = path
            .trim_start_matches("/scim/v2/")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let lower_cased = self.how.lower_cases_emails;
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["ServiceProviderConfig"]) => scim(
                StatusCode::OK,
                &json!({"patch": {"supported": true},
                        "filter": {"supported": true, "maxResults": 100},
                        "etag": {"supported": false}, "bulk": {"supported": false}}),
            ),
            ("GET", [kind @ ("Users" | "Groups")]) => {
                let params: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(query.as_bytes())
                        .into_owned()
                        .collect();
                let all = if *kind == "Users" {
                    self.users()
                } else {
                    self.groups()
                };
                let wanted = params.get("filter").and_then(|f| filter::parse(f).ok());
                let found: Vec<Value> = all
                    .into_iter()
                    .filter(|r| {
                        self.how.ignores_filter || wanted.as_ref().is_none_or(|f| f.matches(r))
                    })
                    .collect();
                let start = params
                    .get("startIndex")
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(1)
                    .max(1);
                let count = params
                    .get("count")
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(100);
                let mut total = found.len();
                let mut found = found;
                let whole_listing = *kind == "Users" && wanted.is_none();
                if whole_listing && self.how.drops_from_listing && !found.is_empty() {
                    found.remove(0);
                }
                if whole_listing && self.how.overstates_listing_total {
                    total += 1;
                }
                let page: Vec<Value> = found.iter().skip(start - 1).take(count).cloned().collect();
                scim(
                    StatusCode::OK,
                    &json!({"schemas": [roster::scim::schemas::LIST_RESPONSE],
                            "totalResults": total, "startIndex": start,
                            "itemsPerPage": page.len(), "Resources": page}),
                )
            }
            ("POST", [kind @ ("Users" | "Groups")]) => {
                let (list, key) = if *kind == "Users" {
                    (self.users(), "userName")
                } else {
                    (self.groups(), "displayName")
                };
                let name = body[key].as_str().unwrap_or("").to_lowercase();
                if !self.how.allows_duplicates
                    && list
                        .iter()
                        .any(|r| r[key].as_str().is_some_and(|n| n.to_lowercase() == name))
                {
                    return error(StatusCode::CONFLICT, Some("uniqueness"), "taken");
                }
                let created = self.store(if *kind == "Users" { "u" } else { "g" }, body.clone());
                if *kind == "Groups"
                    && self.how.loses_first_group_create_answer
                    && !self.group_create_answer_lost.swap(true, Ordering::SeqCst)
                {
                    return error(StatusCode::BAD_GATEWAY, None, "the answer was lost");
                }
                scim(StatusCode::CREATED, &created)
            }
            (m @ ("GET" | "PATCH" | "DELETE"), [kind @ ("Users" | "Groups"), id]) => {
                let removes = body["Operations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|op| {
                        op["op"]
                            .as_str()
                            .is_some_and(|o| o.eq_ignore_ascii_case("remove"))
                    });
                let adds = body["Operations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|op| {
                        op["op"]
                            .as_str()
                            .is_some_and(|o| o.eq_ignore_ascii_case("add"))
                    });
                let failing = (removes && self.failing_member_removals.load(Ordering::SeqCst))
                    || (adds && self.failing_member_adds.load(Ordering::SeqCst));
                if m == "PATCH" && *kind == "Groups" && failing {
                    return error(StatusCode::SERVICE_UNAVAILABLE, None, "try again later");
                }
                let list = if *kind == "Users" {
                    &self.users
                } else {
                    &self.groups
                };
                let mut list = list.lock().unwrap();
                let Some(at) = list.iter().position(|r| id_text(r) == *id) else {
                    return error(StatusCode::NOT_FOUND, None, "no such resource");
                };
                match m {
                    "GET" => scim(StatusCode::OK, &list[at]),
                    "DELETE" => {
                        list.remove(at);
                        Response::builder().status(StatusCode::NO_CONTENT).finish()
                    }
                    _ => {
                        apply_patch(&mut list[at], body);
                        if lower_cased {
                            lower_case_emails(&mut list[at]);
                        }
                        scim(StatusCode::OK, &list[at])
                    }
                }
            }
            _ => error(StatusCode::NOT_FOUND, None, "no such endpoint"),
        }
    }
}

/// Serves the stub on a free loopback port; returns its SCIM base URL.
async fn serve(stub: Arc<Stub>) -> String {
    let endpoint = poem::endpoint::make(move |req: Request| {
        let stub = stub.clone();
        async move {
            let authorized = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"));
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            let bytes = req.into_body().into_vec().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            stub.seen.lock().unwrap().push(Seen {
                method: method.to_string(),
                path: path.clone(),
                query: url::form_urlencoded::parse(query.as_bytes())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&"),
            });
            if !authorized {
                return error(StatusCode::UNAUTHORIZED, None, "token required");
            }
            if method == Method::POST {
                stub.hold_post().await;
            }
            stub.answer(&method, &path, &query, &body)
        }
    });
    format!("http://{}/scim/v2", crate::helpers::serve(endpoint).await)
}

/// An app on `base_url`: userName and the work e-mail from HR's email, matched on `matching`.
fn stub_app(name: &str, base_url: &str, extra: Value) -> Value {
    let mut body = app_body(
        name,
        json!({
            "base_url": base_url,
            "auth": {"type": "bearer", "token": TOKEN},
            "rate_limit": {"per_second": 100, "burst": 100},
            "timeout_ms": 5000,
            "mappings": [
                {"target": "userName", "source": "email"},
                {"target": "name.givenName", "source": "given_name"},
                {"target": "name.familyName", "source": "family_name"},
                {"target": "emails[type eq \"work\"].value", "source": "email"},
                {"target": "externalId", "source": "employee_id"}
            ],
        }),
    );
    crate::helpers::merge(&mut body, &extra);
    body
}

async fn app_on(app: &TestApp, name: &str, base_url: &str, extra: Value) -> String {
    app.create_app(&stub_app(name, base_url, extra)).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A stub that creates a second account with a taken userName, as many SaaS targets do.
fn stub_allowing_duplicates() -> Arc<Stub> {
    Stub::new(Misbehaviour {
        allows_duplicates: true,
        ..Misbehaviour::default()
    })
}

/// Pauses (or resumes) the app: its jobs wait meanwhile.
async fn set_paused(app: &TestApp, app_id: &str, paused: bool) {
    let action = if paused { "pause" } else { "resume" };
    app.post(&format!("/api/v1/apps/{app_id}/{action}"), &json!({}))
        .await
        .expect(200);
}

/// The person's link holds `account` and is `linked`.
async fn assert_linked(app: &TestApp, identity_id: &str, account: &Value) {
    let link = link_of(app, "user", identity_id).await.expect("a link");
    assert_eq!(
        link["target_id"].as_str(),
        Some(id_text(account).as_str()),
        "{link}"
    );
    assert_eq!(link["state"], "linked", "{link}");
}

async fn identity_id(app: &TestApp, employee_id: &str) -> String {
    app.get(&format!("/api/v1/identities/{employee_id}"))
        .await
        .expect(200)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn link_of(app: &TestApp, kind: &str, resource_id: &str) -> Option<Value> {
    app.rows(&format!(
        "SELECT target_id, state FROM link WHERE resource_kind = '{kind}' AND resource_id = '{resource_id}'"
    ))
    .await
    .pop()
}

fn admin() -> Value {
    json!({"schemas": [roster::scim::schemas::USER], "userName": "admin@example.com",
           "name": {"givenName": "Site", "familyName": "Admin"},
           "emails": [{"type": "work", "value": "admin@example.com", "primary": true}],
           "active": true})
}

#[tokio::test]
async fn a_target_that_ignores_filter_never_gets_its_only_account_taken_over() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour {
        ignores_filter: true,
        ..Misbehaviour::default()
    });
    let admin = stub.store("u", admin());
    let admin_id = id_text(&admin);
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "ignores-filter", &base, json!({})).await;
    app.post_event(&joiner(
        "f1",
        "ADA",
        "2026-11-01T09:00:00Z",
        json!({"given_name": "Ada", "family_name": "Lovelace"}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let writes = stub.writes();
    assert!(
        !writes.iter().any(|w| w.contains(&admin_id)),
        "the admin account was written to: {writes:?}"
    );
    let users = stub.users();
    assert_eq!(users[0], admin, "the admin account is unchanged");
    let ada = users
        .iter()
        .find(|u| u["userName"] == "ada@example.com")
        .unwrap_or_else(|| panic!("Ada's own account was created: {users:?}"));
    let id = identity_id(&app, "ADA").await;
    let link = link_of(&app, "user", &id).await.expect("a link");
    assert_eq!(link["target_id"].as_str(), Some(id_text(ada).as_str()));
    assert_eq!(link["state"], "linked");

    // A second joiner: the listing now holds two accounts, neither of them hers.
    app.post_event(&joiner("f2", "BOB", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let users = stub.users();
    assert_eq!(users.len(), 3, "{users:?}");
    assert_eq!(users[0], admin);
    assert!(
        !stub
            .writes()
            .iter()
            .any(|w| w.starts_with("PATCH") || w.starts_with("PUT")),
        "nobody was adopted: {:?}",
        stub.writes()
    );
}

#[tokio::test]
async fn a_target_that_ignores_filter_never_gets_its_only_group_renamed_or_emptied() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour {
        ignores_filter: true,
        ..Misbehaviour::default()
    });
    let member = stub.store("u", admin());
    let existing = stub.store(
        "g",
        json!({"schemas": [roster::scim::schemas::GROUP], "displayName": "Administrators",
               "members": [{"value": id_text(&member)}]}),
    );
    let base = serve(stub.clone()).await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "board-room", "members": ["G1"]}),
    )
    .await
    .expect(201);
    let app_id = app_on(
        &app,
        "groups-ignore-filter",
        &base,
        json!({"group_push": ["board-room"]}),
    )
    .await;
    app.post_event(&joiner("g1", "G1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let board = eventually("the pushed group", Duration::from_secs(20), || async {
        stub.groups()
            .into_iter()
            .find(|g| g["displayName"] == "board-room")
    })
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let groups = stub.groups();
    assert_eq!(groups[0], existing, "the existing group is untouched");
    let existing_id = id_text(&existing);
    assert!(
        !stub.writes().iter().any(|w| w.contains(&existing_id)),
        "{:?}",
        stub.writes()
    );
    let link = link_of(&app, "group", "board-room").await.expect("a link");
    assert_eq!(link["target_id"].as_str(), Some(id_text(&board).as_str()));
}

#[tokio::test]
async fn a_target_with_numeric_ids_is_linked_by_their_text() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour {
        numeric_ids: true,
        ..Misbehaviour::default()
    });
    // A hand-made account to adopt, and a joiner to create.
    let hand_made = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER], "userName": "n1@example.com",
               "title": "Old", "active": true}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "numeric", &base, json!({})).await;
    for e in ["N1", "N2"] {
        app.post_event(&joiner(
            &format!("n{e}"),
            e,
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    app.settled(&app_id, Duration::from_secs(20)).await;
    let users = stub.users();
    assert_eq!(users.len(), 2, "adopted one, created one: {users:?}");
    for (employee, user_name) in [("N1", "n1@example.com"), ("N2", "n2@example.com")] {
        let account = users
            .iter()
            .find(|u| u["userName"] == user_name)
            .expect("account");
        let id = identity_id(&app, employee).await;
        let link = link_of(&app, "user", &id).await.expect("a link");
        assert_eq!(link["state"], "linked", "{employee}: {link}");
        assert_eq!(link["target_id"].as_str(), Some(id_text(account).as_str()));
    }
    assert_eq!(id_text(&users[0]), id_text(&hand_made));
    assert_eq!(app.count("job WHERE state = 'dead'").await, 0);
    // A mover reaches the numeric id's account.
    app.post_event(&event(
        "n3",
        "mover",
        "N1",
        "2026-11-01T10:00:00Z",
        json!({"family_name": "Moved"}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    assert_eq!(stub.users()[0]["name"]["familyName"], "Moved");
}

#[tokio::test]
async fn a_target_that_lower_cases_emails_is_matched_on_them_without_a_duplicate() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour {
        lower_cases_emails: true,
        ..Misbehaviour::default()
    });
    // Made by hand before roster, the address (and the userName made of it) lower-cased.
    let hand_made = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER], "userName": "Ada.Lovelace@Example.com",
               "emails": [{"type": "work", "value": "Ada.Lovelace@Example.com", "primary": true}],
               "active": true}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "lower-case", &base, json!({})).await;
    for (event_id, employee, email) in [
        ("l1", "L1", "Ada.Lovelace@Example.com"),
        ("l2", "L2", "Grace.Hopper@Example.com"),
    ] {
        app.post_event(&joiner(
            event_id,
            employee,
            "2026-11-01T09:00:00Z",
            json!({"email": email}),
        ))
        .await;
    }
    app.settled(&app_id, Duration::from_secs(20)).await;
    let users = stub.users();
    assert_eq!(users.len(), 2, "one adopted, one created: {users:?}");
    assert_eq!(users[0]["userName"], "ada.lovelace@example.com");
    let id = identity_id(&app, "L1").await;
    let link = link_of(&app, "user", &id).await.expect("a link");
    assert_eq!(link["state"], "linked");
    assert_eq!(
        link["target_id"].as_str(),
        Some(id_text(&hand_made).as_str())
    );
    // A change later reaches the same accounts, and nothing is created twice.
    for (event_id, employee) in [("l3", "L1"), ("l4", "L2")] {
        app.post_event(&event(
            event_id,
            "mover",
            employee,
            "2026-11-01T10:00:00Z",
            json!({"family_name": "Moved"}),
        ))
        .await;
    }
    app.settled(&app_id, Duration::from_secs(20)).await;
    let users = stub.users();
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(
        users.iter().all(|u| u["name"]["familyName"] == "Moved"),
        "{users:?}"
    );
    assert_eq!(app.count("job WHERE state = 'dead'").await, 0);
}

#[tokio::test]
async fn a_new_hire_given_a_leavers_address_never_takes_over_the_leavers_account() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let base = serve(stub.clone()).await;
    let app_id = app_on(
        &app,
        "ex-employee",
        &base,
        json!({"deprovision": {"action": "deactivate", "delete_after_days": 365}}),
    )
    .await;
    let john = json!({"email": "john@example.com", "given_name": "John", "family_name": "Old"});
    app.post_event(&joiner("x1", "E-OLD", "2026-11-01T09:00:00Z", john))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    app.post_event(&event(
        "x2",
        "leaver",
        "E-OLD",
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    eventually("John deactivated", Duration::from_secs(20), || async {
        (stub.users().first()?["active"] == json!(false)).then_some(())
    })
    .await;
    let before = stub.users();
    let writes_before = stub.writes();

    let new_hire = json!({"email": "john@example.com", "given_name": "Joan", "family_name": "New"});
    app.post_event(&joiner("x3", "E-NEW", "2026-11-03T09:00:00Z", new_hire))
        .await;
    let dead = eventually(
        "the new hire's job dead",
        Duration::from_secs(20),
        || async {
            let jobs = app.get("/api/v1/jobs?state=dead").await.body;
            jobs["items"].as_array().and_then(|a| a.first().cloned())
        },
    )
    .await;
    let reason = dead["last_error"].as_str().unwrap_or_default();
    let old_id = identity_id(&app, "E-OLD").await;
    assert!(
        reason.contains("conflict") && reason.contains(&old_id),
        "the reason names the conflict and the other identity: {dead}"
    );
    assert_eq!(stub.users(), before, "John's account is unchanged");
    assert_eq!(
        stub.writes(),
        writes_before,
        "nothing was written for the new hire"
    );
    let new_id = identity_id(&app, "E-NEW").await;
    let logged = app
        .rows(&format!(
            "SELECT outcome, error, path FROM operation WHERE resource_id = '{new_id}'"
        ))
        .await;
    assert!(
        logged.iter().any(|r| r["outcome"] == "failed"
            && r["error"].as_str().is_some_and(|e| e.contains("conflict"))),
        "the provisioning log shows the refusal: {logged:?}"
    );
    let link = link_of(&app, "user", &old_id).await.expect("John's link");
    assert_eq!(link["state"], "deactivated", "John keeps his link");
    assert!(link_of(&app, "user", &new_id).await.is_none());
}

#[tokio::test]
async fn the_provisioning_log_keeps_no_address_from_a_look_up() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "redacted", &base, json!({})).await;
    app.post_event(&joiner(
        "r1",
        "R1",
        "2026-11-01T09:00:00Z",
        json!({"email": "secret.person@example.com"}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    assert!(
        stub.seen()
            .iter()
            .any(|s| s.method == "GET" && s.path.ends_with("/Users")),
        "a look-up was made"
    );
    let id = identity_id(&app, "R1").await;
    let logged = app
        .rows(&format!(
            "SELECT path, error, resource_id FROM operation WHERE app_id = '{app_id}'"
        ))
        .await;
    let look_up = logged
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.contains("filter=")))
        .unwrap_or_else(|| panic!("a look-up row: {logged:?}"));
    assert_eq!(
        look_up["resource_id"],
        id.as_str(),
        "the identity id is kept"
    );
    assert!(
        look_up["path"]
            .as_str()
            .is_some_and(|p| p.contains(r#"userName eq "<redacted>""#)),
        "{look_up}"
    );
    for row in &logged {
        assert!(!row.to_string().contains("secret.person"), "{row}");
    }
}

#[tokio::test]
async fn the_unique_live_link_index_detaches_later_duplicates_on_upgrade() {
    use migration::MigratorTrait as _;
    use roster::store::entity::link;
    use sea_orm::{ActiveModelTrait as _, ConnectionTrait as _, Set};
    let app = crate::helpers::spawn_planner().await;
    let app_id = app.create_app(&app_body("upgrade", json!({}))).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The database as it was before the upgrade: no index, and links that share an account.
    app.db
        .execute_unprepared("DROP INDEX uq_link_live_target")
        .await
        .expect("drop the index");
    app.db
        .execute_unprepared(
            "DELETE FROM seaql_migrations WHERE version = 'm20261203_000001_unique_live_link_target'",
        )
        .await
        .expect("forget the migration");
    let insert = |resource: &str, target: &str, state: &str, delete_after: Option<i64>| {
        let now = chrono::Utc::now();
        link::ActiveModel {
            app_id: Set(app_id.clone()),
            resource_kind: Set("user".into()),
            resource_id: Set(resource.into()),
            target_id: Set(Some(target.into())),
            snapshot: Set(Some(json!({"userName": "john@example.com"}))),
            snapshot_hash: Set(Some("h".into())),
            state: Set(state.into()),
            delete_after: Set(delete_after),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
    };
    insert("old", "T", "deactivated", Some(9_000_000_000_000))
        .insert(&app.db)
        .await
        .expect("old");
    insert("new", "T", "linked", None)
        .insert(&app.db)
        .await
        .expect("new");
    insert("gone", "T", "deleted", None)
        .insert(&app.db)
        .await
        .expect("gone");
    insert("other", "U", "linked", None)
        .insert(&app.db)
        .await
        .expect("other");
    migration::Migrator::up(&app.db, None)
        .await
        .expect("the upgrade runs on existing data");
    let row = |resource: &'static str| {
        let app = &app;
        async move {
            app.rows(&format!(
                "SELECT target_id, state, last_error, delete_after, snapshot FROM link WHERE resource_id = '{resource}'"
            ))
            .await
            .pop()
            .expect("row")
        }
    };
    let old = row("old").await;
    assert_eq!(
        (old["target_id"].as_str(), old["state"].as_str()),
        (Some("T"), Some("deactivated"))
    );
    let new = row("new").await;
    assert_eq!(new["target_id"], Value::Null, "{new}");
    assert_eq!(new["state"], "error");
    assert_eq!(new["delete_after"], Value::Null);
    assert_eq!(new["snapshot"], Value::Null);
    assert!(
        new["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict")),
        "{new}"
    );
    assert_eq!(
        row("gone").await["target_id"],
        "T",
        "a deleted link is not live"
    );
    assert_eq!(row("other").await["state"], "linked");
    // And from now on the database refuses a second live link to one account.
    assert!(
        insert("third", "U", "pending", None)
            .insert(&app.db)
            .await
            .is_err()
    );
    insert("fourth", "U", "deleted", None)
        .insert(&app.db)
        .await
        .expect("a deleted link may share the account");
}

#[tokio::test]
async fn a_released_job_of_a_person_long_gone_is_not_marked_as_an_unsure_create() {
    use roster::store::entity::identity;
    use sea_orm::{
        ActiveModelTrait as _, ConnectionTrait as _, EntityTrait as _, IntoActiveModel as _, Set,
    };
    let app = crate::helpers::spawn_planner().await;
    let app_id = app.create_app(&app_body("released", json!({}))).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (e, employee) in [("p1", "GONE"), ("p2", "HERE")] {
        app.post_event(&joiner(e, employee, "2026-11-01T09:00:00Z", json!({})))
            .await;
    }
    app.post_event(&event(
        "p3",
        "leaver",
        "GONE",
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    let gone = identity_id(&app, "GONE").await;
    let here = identity_id(&app, "HERE").await;
    // GONE left an hour before the job was claimed; both jobs' instance then died.
    let mut person = identity::Entity::find_by_id(gone.as_str())
        .one(&app.db)
        .await
        .expect("read")
        .expect("GONE")
        .into_active_model();
    person.updated_at = Set(chrono::Utc::now() - chrono::Duration::hours(1));
    person.update(&app.db).await.expect("backdate");
    let claimed = app
        .db
        .execute_unprepared(&format!(
            "UPDATE job SET state = 'running', lease_owner = 'dead-instance', lease_until = 1 \
             WHERE app_id = '{app_id}' AND state = 'pending'"
        ))
        .await
        .expect("claim")
        .rows_affected();
    assert_eq!(claimed, 2);
    let released = roster::store::queue::release(&app.db, None, roster::store::queue::now_ms())
        .await
        .expect("release");
    assert_eq!(released, 2);
    assert!(
        link_of(&app, "user", &gone).await.is_none(),
        "a job that read a terminated person never created"
    );
    let unsure = link_of(&app, "user", &here)
        .await
        .expect("an unsure create");
    assert_eq!(unsure["state"], "pending");
}

/// A job that died while it may have been creating is released back (or closed, superseded by
/// the person's newer job) in the same transaction that marks the create unsure: a claim in
/// between would run the newer job, a leaver's, on a link that says nothing was created, and
/// the account the dead job made would stay active. On PostgreSQL another connection holds the
/// mark back (an uncommitted link of the same key) and looks meanwhile: the dead job must
/// still be running. (On SQLite a release holds the writer's turn, so no claim comes between.)
#[tokio::test]
async fn a_released_job_leaves_running_only_together_with_its_unsure_create() {
    use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
    let app = crate::helpers::spawn_planner().await;
    if app.db.get_database_backend() != sea_orm::DbBackend::Postgres {
        eprintln!("PostgreSQL only: on SQLite a release and a claim never interleave");
        return;
    }
    let app_id = app.create_app(&app_body("unsure", json!({}))).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.post_event(&joiner(
        "u1",
        "SOON-GONE",
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    let person = identity_id(&app, "SOON-GONE").await;
    // Its create was under way when its instance died; then the person left.
    app.db
        .execute_unprepared(&format!(
            "UPDATE job SET state = 'running', lease_owner = 'dead-instance', lease_until = 1 \
             WHERE app_id = '{app_id}' AND state = 'pending'"
        ))
        .await
        .expect("claim");
    app.post_event(&event(
        "u2",
        "leaver",
        "SOON-GONE",
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    let running = format!(
        "job WHERE app_id = '{app_id}' AND lease_owner = 'dead-instance' AND state = 'running'"
    );
    assert_eq!(app.count(&running).await, 1);
    // Holds the link's key: the release's mark waits for this transaction.
    let holder = app.db.begin().await.expect("begin");
    holder
        .execute_unprepared(&format!(
            "INSERT INTO link (app_id, resource_kind, resource_id, state, created_at, updated_at) \
             VALUES ('{app_id}', 'user', '{person}', 'pending', now(), now())"
        ))
        .await
        .expect("hold the link's key");
    let release = {
        let db = app.db.clone();
        tokio::spawn(async move {
            roster::store::queue::release(&db, None, roster::store::queue::now_ms()).await
        })
    };
    eventually("the release waits for the link", Duration::from_secs(10), || async {
        let waiting = app
            .count("pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
            .await;
        (waiting > 0).then_some(())
    })
    .await;
    assert_eq!(
        app.count(&running).await,
        1,
        "the dead job stopped running before its create was marked unsure"
    );
    holder.rollback().await.expect("let go");
    let released = release.await.expect("joined").expect("release");
    assert_eq!(released, 1);
    assert_eq!(app.count(&running).await, 0);
    let unsure = link_of(&app, "user", &person)
        .await
        .expect("an unsure create");
    assert_eq!(unsure["state"], "pending");
    assert_eq!(unsure["target_id"], Value::Null);
}

#[tokio::test]
async fn a_target_group_linked_to_another_roster_group_is_never_adopted() {
    use roster::store::entity::link;
    use sea_orm::{ActiveModelTrait as _, Set};
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    // Roster's group `x` pushed this target group; someone renamed it `y` in the app.
    let taken = stub.store(
        "g",
        json!({"schemas": [roster::scim::schemas::GROUP], "displayName": "y", "members": []}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "group-conflict", &base, json!({"group_push": ["y"]})).await;
    let now = chrono::Utc::now();
    link::ActiveModel {
        app_id: Set(app_id.clone()),
        resource_kind: Set("group".into()),
        resource_id: Set("x".into()),
        target_id: Set(Some(id_text(&taken))),
        snapshot: Set(Some(json!({"displayName": "x", "members": []}))),
        state: Set("linked".into()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&app.db)
    .await
    .expect("x's link");
    app.post("/api/v1/groups", &json!({"name": "y", "members": ["Y1"]}))
        .await
        .expect(201);
    app.post_event(&joiner("y1", "Y1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let dead = eventually("the group's job dead", Duration::from_secs(20), || async {
        let jobs = app.get("/api/v1/jobs?state=dead").await.body;
        jobs["items"].as_array().and_then(|a| a.first().cloned())
    })
    .await;
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict") && e.contains("roster group `x`")),
        "{dead}"
    );
    assert_eq!(stub.groups(), [taken], "the group is untouched");
    assert!(link_of(&app, "group", "y").await.is_none());
}

#[tokio::test]
async fn two_people_with_one_address_never_share_one_account() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "one-address", &base, json!({})).await;
    // HR sends two people with the same address, at once.
    let both: Vec<Value> = ["TWIN-A", "TWIN-B"]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            joiner(
                &format!("t{i}"),
                e,
                "2026-11-01T09:00:00Z",
                json!({"email": "twin@example.com", "given_name": *e}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": both}))
        .await
        .expect(202);
    let dead = eventually("one job dead", Duration::from_secs(30), || async {
        let jobs = app.get("/api/v1/jobs?state=dead").await.body;
        jobs["items"].as_array().and_then(|a| a.first().cloned())
    })
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict")),
        "{dead}"
    );
    let users = stub.users();
    assert_eq!(users.len(), 1, "{users:?}");
    let links = app
        .rows(&format!(
            "SELECT resource_id, target_id, state FROM link WHERE app_id = '{app_id}' AND target_id IS NOT NULL"
        ))
        .await;
    assert_eq!(links.len(), 1, "one owner: {links:?}");
    assert!(
        !stub.writes().iter().any(|w| w.starts_with("PATCH")),
        "the one account was not overwritten with the other person: {:?}",
        stub.writes()
    );
}

/// Issue 17: a joiner's matching look-up is made as soon as its job is claimed, while the job
/// still waits for the only worker (held by another joiner's create), not after: the look-up
/// is off the job's critical path. Against a target that does not enforce userName
/// uniqueness, the account found that way is adopted, never created a second time.
#[tokio::test]
async fn a_waiting_joiner_is_looked_up_ahead_and_adopted_where_the_target_allows_duplicates() {
    // One worker: A's job holds it through its held create; B's job, claimed meanwhile, waits
    // for it. The app has room for a second call (`max_concurrency` counts calls in flight).
    let app = spawn_app_with(|c| c.workers = 1).await;
    let stub = Stub::new(Misbehaviour {
        allows_duplicates: true,
        holds_posts: true,
        ..Misbehaviour::default()
    });
    let made_by_hand = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER], "userName": "ahead-b@example.com",
               "name": {"givenName": "B", "familyName": "Hand"}, "active": true}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(
        &app,
        "look-ahead",
        &base,
        // Longer than the waits below: A's held create does not time out meanwhile.
        json!({"max_concurrency": 2, "timeout_ms": 60_000}),
    )
    .await;
    // A first: its create holds the only worker (the stub holds the POST).
    app.post_event(&joiner("la0", "AHEAD-A", "2026-11-01T09:00:00Z", json!({})))
        .await;
    eventually("A's create held", Duration::from_secs(20), || async {
        stub.seen().iter().any(|s| s.method == "POST").then_some(())
    })
    .await;
    // Then B, whose job waits for that worker: its look-up is made meanwhile.
    app.post_event(&joiner("la1", "AHEAD-B", "2026-11-01T09:00:00Z", json!({})))
        .await;
    eventually(
        "B looked up while A's create holds the worker",
        Duration::from_secs(20),
        || async {
            stub.seen()
                .iter()
                .any(|s| {
                    s.method == "GET" && s.query.to_lowercase().contains("ahead-b@example.com")
                })
                .then_some(())
        },
    )
    .await;
    stub.release_posts();
    app.settled(&app_id, Duration::from_secs(20)).await;

    let users = stub.users();
    assert_eq!(users.len(), 2, "A created, B's account adopted: {users:?}");
    let posts: Vec<String> = stub
        .writes()
        .into_iter()
        .filter(|w| w.starts_with("POST"))
        .collect();
    assert_eq!(posts.len(), 1, "only A was created: {posts:?}");
    let b = identity_id(&app, "AHEAD-B").await;
    assert_linked(&app, &b, &made_by_hand).await;
    let logged = app
        .rows(&format!(
            "SELECT path FROM operation WHERE app_id = '{app_id}' AND resource_id = '{b}' \
             AND method = 'GET' AND path LIKE '%filter=%'"
        ))
        .await;
    assert_eq!(
        logged.len(),
        1,
        "B's log shows the look-up made for it: {logged:?}"
    );
}

/// Issue 17, the other half: where the app's quirks say the target rejects a taken userName
/// with 409, a joiner is created without a look-up first (one call), and a joiner whose
/// account already exists gets the 409, is looked up then, and is linked to that account:
/// adopted, not created twice.
#[tokio::test]
async fn where_the_target_rejects_taken_user_names_a_joiner_is_created_first_and_a_409_links_it() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let made_by_hand = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER], "userName": "first-b@example.com",
               "name": {"givenName": "B", "familyName": "Hand"}, "active": true}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(
        &app,
        "create-first",
        &base,
        json!({"quirks": {"rejects_duplicate_user_names": true}}),
    )
    .await;
    app.post_event(&joiner("cf0", "FIRST-A", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.post_event(&joiner("cf1", "FIRST-B", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;

    let users = stub.users();
    assert_eq!(users.len(), 2, "A created, B's account linked: {users:?}");
    let looked_up = |who: &str| {
        stub.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.query.to_lowercase().contains(who))
            .count()
    };
    assert_eq!(
        looked_up("first-a@example.com"),
        0,
        "A was created without a look-up"
    );
    assert_eq!(
        looked_up("first-b@example.com"),
        1,
        "B was looked up after its 409"
    );
    let posts = stub
        .writes()
        .into_iter()
        .filter(|w| w.starts_with("POST"))
        .count();
    assert_eq!(posts, 2, "one create each (B's answered 409)");
    let b = identity_id(&app, "FIRST-B").await;
    assert_linked(&app, &b, &made_by_hand).await;
}

/// Two people with one address against a target that does not enforce uniqueness: both are
/// looked up ahead (nothing there yet), one creates the account, and the other, whose answer
/// predates that create, asks again and finds it linked to someone else: never a second
/// account.
#[tokio::test]
async fn two_people_with_one_address_never_make_two_accounts_where_the_target_allows_it() {
    let app = spawn_app().await;
    let stub = stub_allowing_duplicates();
    let base = serve(stub.clone()).await;
    let app_id = app_on(
        &app,
        "one-address-dup",
        &base,
        json!({"max_concurrency": 1}),
    )
    .await;
    let both: Vec<Value> = ["TWO-A", "TWO-B"]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            joiner(
                &format!("tw{i}"),
                e,
                "2026-11-01T09:00:00Z",
                json!({"email": "two@example.com", "given_name": *e}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": both}))
        .await
        .expect(202);
    app.settled(&app_id, Duration::from_secs(30)).await;
    let users = stub.users();
    assert_eq!(users.len(), 1, "{users:?}");
    // Both asked before the create (merged, or one read of the small target's listing), and
    // the second asked again after it.
    let seen = stub.seen();
    let is_look_up = |s: &&Seen| s.method == "GET" && s.path.ends_with("/Users");
    let create = seen.iter().position(|s| s.method == "POST");
    assert!(
        create.is_some_and(|at| seen[..at].iter().any(|s| is_look_up(&s))
            && seen[at..].iter().any(|s| is_look_up(&s))),
        "looked up before the create, and again after it: {seen:?}"
    );
    let dead = app.get("/api/v1/jobs?state=dead").await.body;
    assert!(
        dead["items"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict")),
        "{dead}"
    );
}

/// Joiners claimed together by an app whose target takes one filter term, against `stub`, where
/// one of them (`{prefix}-c`) already has an account made by hand: returns the app's id, the
/// hand-made account and the joiners' employee ids, once the app has settled.
async fn joiners_claimed_together(
    app: &TestApp,
    stub: &Arc<Stub>,
    prefix: &str,
) -> (String, Value, Vec<String>) {
    joiners_claimed_together_with(app, stub, prefix, json!({"filter_or": false})).await
}

/// [`joiners_claimed_together`] with the app's `quirks`.
async fn joiners_claimed_together_with(
    app: &TestApp,
    stub: &Arc<Stub>,
    prefix: &str,
    quirks: Value,
) -> (String, Value, Vec<String>) {
    let made_by_hand = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER],
               "userName": format!("{prefix}-c@example.com"),
               "name": {"givenName": "C", "familyName": "Hand"}, "active": true}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(app, prefix, &base, json!({"quirks": quirks})).await;
    let people: Vec<String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|p| format!("{prefix}-{p}").to_uppercase())
        .collect();
    let events: Vec<Value> = people
        .iter()
        .enumerate()
        .map(|(i, p)| {
            joiner(
                &format!("{prefix}{i}"),
                p,
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": events}))
        .await
        .expect(202);
    app.settled(&app_id, Duration::from_secs(30)).await;
    (app_id, made_by_hand, people)
}

/// Unfiltered listings of users and filtered look-ups the stub has seen.
fn listings_and_look_ups(stub: &Stub) -> (usize, usize) {
    let listings = stub.seen().into_iter().filter(|s| {
        s.method == "GET" && s.path.ends_with("/Users") && !s.query.contains("filter=")
    });
    let look_ups = stub
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with("/Users") && s.query.contains("filter="));
    (listings.count(), look_ups.count())
}

/// Issue 17 (saas): look-ups that cannot share one `or` filter are answered by one read of a
/// small target's whole listing, checked locally; a joiner whose account exists there is
/// adopted, never created again, although the target does not enforce uniqueness.
#[tokio::test]
async fn joiners_found_by_one_listing_of_a_small_target_are_adopted_never_duplicated() {
    let app = spawn_app().await;
    let stub = stub_allowing_duplicates();
    let (_, made_by_hand, people) = joiners_claimed_together(&app, &stub, "listed").await;

    let users = stub.users();
    assert_eq!(users.len(), people.len(), "one account each: {users:?}");
    let c = identity_id(&app, "LISTED-C").await;
    assert_linked(&app, &c, &made_by_hand).await;
    let (listings, look_ups) = listings_and_look_ups(&stub);
    assert!(listings >= 1, "the target's listing was read");
    assert!(
        look_ups < people.len(),
        "fewer look-ups than joiners ({look_ups} for {})",
        people.len()
    );
}

/// Issue 17: a proven listing is kept a minute to answer the app's next look-ups without a
/// call. An account another writer creates meanwhile is not in it — the window a look-up sent
/// ahead has too: the joiner's create then meets the target's 409, the look-up after the 409
/// asks the target afresh, and the account found is adopted; no other account is written to.
#[tokio::test]
async fn an_account_made_after_a_kept_listing_is_adopted_after_the_create_s_409() {
    let app = spawn_app().await;
    // A target that enforces unique userNames.
    let stub = Stub::new(Misbehaviour::default());
    let (app_id, _, people) = joiners_claimed_together(&app, &stub, "writer").await;
    assert_eq!(stub.users().len(), people.len(), "one account each");
    let (listings, _) = listings_and_look_ups(&stub);
    assert!(listings >= 1, "the target's listing was read (and kept)");
    // Another writer creates the next joiner's account after that listing.
    let by_another = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER],
               "userName": "writer-g@example.com",
               "name": {"givenName": "G", "familyName": "Elsewhere"}, "active": true}),
    );
    let by_another_id = id_text(&by_another);
    let before = stub.seen().len();
    let others_before: Vec<Value> = stub
        .users()
        .into_iter()
        .filter(|u| id_text(u) != by_another_id)
        .collect();
    app.post_event(&joiner(
        "writer-late",
        "WRITER-G",
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;

    let users = stub.users();
    assert_eq!(
        users.len(),
        people.len() + 1,
        "no second account: {users:?}"
    );
    let g = identity_id(&app, "WRITER-G").await;
    let link = link_of(&app, "user", &g).await.expect("G's link");
    assert_eq!(link["target_id"].as_str(), Some(by_another_id.as_str()));
    let after: Vec<Seen> = stub.seen()[before..].to_vec();
    let calls: Vec<String> = after
        .iter()
        .map(|s| format!("{} {} {}", s.method, s.path, s.query))
        .collect();
    // The kept listing answered the look-up: no call before the create, which met the 409.
    assert!(calls[0].starts_with("POST "), "{calls:?}");
    // Asked afresh after the 409 (a new listing of the one-page target, or a filter).
    assert!(
        after[1].method == "GET" && after[1].path.ends_with("/Users"),
        "{calls:?}"
    );
    // Only the adopted account is written to; every other account is as it was.
    assert!(
        after
            .iter()
            .filter(|s| s.method != "GET" && s.method != "POST")
            .all(|s| s.path.ends_with(&format!("/{by_another_id}"))),
        "{calls:?}"
    );
    let others_after: Vec<Value> = stub
        .users()
        .into_iter()
        .filter(|u| id_text(u) != by_another_id)
        .collect();
    assert_eq!(others_after, others_before);
}

/// Leaves `person`'s link as a create whose answer was lost leaves it: `pending`, no account.
async fn mark_create_unsure(app: &TestApp, app_id: &str, person: &str) {
    use roster::store::entity::link;
    use sea_orm::{ActiveModelTrait as _, Set};
    let now = chrono::Utc::now();
    link::ActiveModel {
        app_id: Set(app_id.to_owned()),
        resource_kind: Set("user".into()),
        resource_id: Set(person.to_owned()),
        target_id: Set(None),
        state: Set("pending".into()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&app.db)
    .await
    .expect("an unsure create");
}

/// A create sent whose answer never came (another instance's, or one before a crash: the
/// link is left `pending` without an account) may have made the account after a listing this
/// instance keeps was read. The retry asks the target afresh, never that listing: the account
/// is adopted, not created a second time where the target allows duplicate userNames.
#[tokio::test]
async fn an_unsure_create_is_looked_up_afresh_never_in_a_listing_kept_from_before() {
    let app = spawn_app().await;
    let stub = stub_allowing_duplicates();
    let (app_id, _, people) = joiners_claimed_together(&app, &stub, "unsure").await;
    let (listings, _) = listings_and_look_ups(&stub);
    assert!(listings >= 1, "the target's listing was read (and kept)");
    set_paused(&app, &app_id, true).await;
    app.post_event(&joiner(
        "unsure-late",
        "UNSURE-G",
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    let g = identity_id(&app, "UNSURE-G").await;
    // Another instance sent G's create; the target made the account, the answer was lost.
    let landed = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER],
               "userName": "unsure-g@example.com", "externalId": "UNSURE-G",
               "name": {"givenName": "G", "familyName": "Unsure"}, "active": true}),
    );
    mark_create_unsure(&app, &app_id, &g).await;
    set_paused(&app, &app_id, false).await;
    app.settled(&app_id, Duration::from_secs(30)).await;

    let users = stub.users();
    assert_eq!(
        users.len(),
        people.len() + 1,
        "no second account: {users:?}"
    );
    assert_linked(&app, &g, &landed).await;
}

/// Two people with one address, P and Q. P's create was sent and its answer lost: the
/// account there may be P's, and P's retry waits its turn. Q's look-up finds that account:
/// Q does not adopt it (the conflict is Q's job's error, and the account is not written to);
/// P's retry links it.
#[tokio::test]
async fn an_account_another_person_s_unsure_create_may_have_made_is_never_adopted() {
    use sea_orm::ConnectionTrait as _;
    let app = spawn_app().await;
    let stub = stub_allowing_duplicates();
    let base = serve(stub.clone()).await;
    let app_id = app_on(&app, "unsure-other", &base, json!({})).await;
    set_paused(&app, &app_id, true).await;
    let address = json!({"email": "shared@example.com"});
    for (event_id, employee) in [("shared-p", "SHARED-P"), ("shared-q", "SHARED-Q")] {
        app.post_event(&joiner(
            event_id,
            employee,
            "2026-11-01T09:00:00Z",
            address.clone(),
        ))
        .await;
    }
    let p = identity_id(&app, "SHARED-P").await;
    let q = identity_id(&app, "SHARED-Q").await;
    // P's create landed unanswered; P's retry is due later.
    let landed = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER],
               "userName": "shared@example.com", "externalId": "SHARED-P",
               "name": {"givenName": "P", "familyName": "Shared"}, "active": true}),
    );
    let landed_id = id_text(&landed);
    mark_create_unsure(&app, &app_id, &p).await;
    let retry_at = |at: i64| {
        format!("UPDATE job SET run_at = {at} WHERE app_id = '{app_id}' AND resource_id = '{p}'")
    };
    app.db
        .execute_unprepared(&retry_at(9_000_000_000_000))
        .await
        .expect("P's retry later");
    set_paused(&app, &app_id, false).await;
    eventually("Q's job to end", Duration::from_secs(30), || async {
        let open = app
            .rows(&format!(
                "SELECT id FROM job WHERE resource_id = '{q}' AND state IN ('pending', 'running')"
            ))
            .await;
        open.is_empty().then_some(())
    })
    .await;
    let written = |stub: &Stub| {
        stub.seen()
            .iter()
            .filter(|s| s.method != "GET" && s.path.ends_with(&format!("/{landed_id}")))
            .count()
    };
    assert_eq!(written(&stub), 0, "Q did not write to P's account");
    let q_link = link_of(&app, "user", &q).await;
    assert!(
        q_link
            .as_ref()
            .is_none_or(|l| l["target_id"].as_str() != Some(landed_id.as_str())),
        "{q_link:?}"
    );
    let q_error = app
        .rows(&format!(
            "SELECT last_error FROM job WHERE resource_id = '{q}' AND state = 'dead'"
        ))
        .await;
    assert!(
        q_error
            .first()
            .and_then(|r| r["last_error"].as_str())
            .is_some_and(|e| e.contains("answer was lost")),
        "{q_error:?}"
    );

    app.db
        .execute_unprepared(&retry_at(0))
        .await
        .expect("P's retry now");
    app.settled(&app_id, Duration::from_secs(30)).await;
    let p_link = link_of(&app, "user", &p).await.expect("P's link");
    assert_eq!(p_link["target_id"].as_str(), Some(landed_id.as_str()));
    assert_eq!(p_link["state"], "linked");
    let users = stub.users();
    assert_eq!(users.len(), 1, "one account: {users:?}");
}

/// Member ids of the stub's only group.
fn group_members(stub: &Stub) -> Vec<String> {
    let groups = stub.groups();
    assert_eq!(groups.len(), 1, "{groups:?}");
    crate::helpers::member_ids(&groups[0])
}

/// A pushed group `name` with one member, `{NAME}-A`, delivered to `stub` with `{NAME}-B` (not
/// a member) provisioned too: the app's id, the roster group's path, and the two accounts' ids.
async fn pushed_group_of_a(
    app: &TestApp,
    stub: &Arc<Stub>,
    name: &str,
) -> (String, String, String, String) {
    let base = serve(stub.clone()).await;
    let upper = name.to_uppercase();
    let (ea, eb) = (format!("{upper}-A"), format!("{upper}-B"));
    let group = app
        .post("/api/v1/groups", &json!({"name": name, "members": [ea]}))
        .await
        .expect(201);
    let group_path = format!(
        "/api/v1/groups/{}",
        group["id"].as_str().unwrap_or_default()
    );
    let app_id = app_on(app, name, &base, json!({"group_push": [name]})).await;
    for employee in [&ea, &eb] {
        app.post_event(&joiner(
            &format!("{employee}-in"),
            employee,
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    app.settled(&app_id, Duration::from_secs(30)).await;
    let id_of_person = |employee: &str| {
        let user_name = format!("{}@example.com", employee.to_lowercase());
        stub.users()
            .iter()
            .find(|u| u["userName"] == json!(user_name))
            .map(id_text)
            .unwrap_or_default()
    };
    let (a, b) = (id_of_person(&ea), id_of_person(&eb));
    assert_eq!(group_members(stub), std::slice::from_ref(&a));
    (app_id, group_path, a, b)
}

/// A group job adds B and then fails to remove A (503): the add was applied, and the group's
/// record says so. B then leaves the roster group before the retry; the retry removes both,
/// where a record without B's add would have left B in the target group for good.
#[tokio::test]
async fn a_member_change_applied_before_a_failure_is_undone_when_no_longer_wanted() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let (app_id, group_path, _, b) = pushed_group_of_a(&app, &stub, "crew").await;

    stub.failing_member_removals.store(true, Ordering::SeqCst);
    app.patch(&group_path, &json!({"members": ["CREW-B"]}))
        .await
        .expect(200);
    eventually(
        "B added, A's removal refused",
        Duration::from_secs(30),
        || async {
            let refused = stub
                .seen()
                .iter()
                .any(|s| s.method == "PATCH" && s.path.contains("/Groups/"))
                && group_members(&stub).contains(&b);
            refused.then_some(())
        },
    )
    .await;
    set_paused(&app, &app_id, true).await;
    app.patch(&group_path, &json!({"members": []}))
        .await
        .expect(200);
    stub.failing_member_removals.store(false, Ordering::SeqCst);
    set_paused(&app, &app_id, false).await;
    app.settled(&app_id, Duration::from_secs(60)).await;
    assert_eq!(
        group_members(&stub),
        Vec::<String>::new(),
        "A and B removed"
    );
}

/// A group job whose add of B is refused (503): B may or may not be a member now, and the
/// record says so without taking B for added — the retry adds B again, where a record
/// listing B as a member would have left B out of the target group for good.
#[tokio::test]
async fn a_member_add_that_failed_is_sent_again() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let (app_id, group_path, a, b) = pushed_group_of_a(&app, &stub, "deck").await;

    stub.failing_member_adds.store(true, Ordering::SeqCst);
    app.patch(&group_path, &json!({"members": ["DECK-A", "DECK-B"]}))
        .await
        .expect(200);
    // The job failed (its retry is scheduled) before the target takes adds again.
    eventually("the group job to fail", Duration::from_secs(30), || async {
        let failed = app
            .rows(&format!(
                "SELECT id FROM job WHERE app_id = '{app_id}' AND resource_kind = 'group' \
                 AND state = 'pending' AND attempts >= 1"
            ))
            .await;
        (!failed.is_empty()).then_some(())
    })
    .await;
    stub.failing_member_adds.store(false, Ordering::SeqCst);
    app.settled(&app_id, Duration::from_secs(60)).await;
    let mut members = group_members(&stub);
    members.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(members, want, "B added on the retry");
}

/// A group roster created whose create's answer was lost is found by name on the retry and
/// known as roster's own by its `externalId`: deleting the roster group deletes it, where one
/// taken for the app's own would stay, with its members, for good.
#[tokio::test]
async fn a_group_roster_created_is_deleted_with_its_roster_group_after_a_lost_answer() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour {
        loses_first_group_create_answer: true,
        ..Misbehaviour::default()
    });
    let base = serve(stub.clone()).await;
    let group = app
        .post(
            "/api/v1/groups",
            &json!({"name": "lost", "members": ["LOST-A"]}),
        )
        .await
        .expect(201);
    let app_id = app_on(&app, "lost", &base, json!({"group_push": ["lost"]})).await;
    app.post_event(&joiner(
        "lost-a",
        "LOST-A",
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(60)).await;
    assert_eq!(stub.groups().len(), 1, "created once, then found by name");
    assert!(stub.group_create_answer_lost.load(Ordering::SeqCst));
    app.delete(&format!(
        "/api/v1/groups/{}",
        group["id"].as_str().unwrap_or_default()
    ))
    .await
    .expect(204);
    app.settled(&app_id, Duration::from_secs(30)).await;
    assert_eq!(
        stub.groups(),
        Vec::<Value>::new(),
        "deleted in the target too"
    );
}

/// An account reconciliation lists as unmanaged (its userName is no address, its primary
/// email at another company's domain) is never adopted by a joiner whose userName it holds:
/// the joiner's job ends in a conflict, and the account is not written to.
#[tokio::test]
async fn a_joiner_never_adopts_an_account_outside_the_managed_domains() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    let external = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER], "userName": "jsmith",
               "emails": [{"value": "jsmith@partner.com", "type": "work", "primary": true}],
               "active": true}),
    );
    let base = serve(stub.clone()).await;
    let app_id = app_on(
        &app,
        "unmanaged",
        &base,
        json!({
            "mappings": [
                {"target": "userName", "source": "user_name"},
                {"target": "emails[type eq \"work\"].value", "source": "email"},
                {"target": "externalId", "source": "employee_id"}
            ],
            "scope": {"email_domains": ["example.com"]},
        }),
    )
    .await;
    app.post_event(&joiner(
        "jsmith-in",
        "JSMITH",
        "2026-11-01T09:00:00Z",
        json!({"user_name": "jsmith", "email": "jsmith@example.com"}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    let external_id = id_text(&external);
    let written: Vec<String> = stub
        .seen()
        .iter()
        .filter(|s| s.method != "GET")
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert!(written.is_empty(), "nothing written: {written:?}");
    assert_eq!(stub.users(), [external], "as it was");
    let person = identity_id(&app, "JSMITH").await;
    let link = link_of(&app, "user", &person).await;
    assert!(
        link.as_ref()
            .is_none_or(|l| l["target_id"].as_str() != Some(external_id.as_str())),
        "{link:?}"
    );
    let dead = app
        .rows("SELECT last_error FROM job WHERE state = 'dead'")
        .await;
    assert!(
        dead.first()
            .and_then(|j| j["last_error"].as_str())
            .is_some_and(|e| e.contains("outside the app's managed domains")),
        "{dead:?}"
    );
}

/// A mover's new address, given to their account, is no longer "absent" in an answer given
/// before (a kept listing): a joiner with that address asks the target again and finds the
/// account, someone else's (a conflict, on the joiner's job); no second account with that
/// userName is made where the target allows duplicates.
#[tokio::test]
async fn a_mover_s_new_address_is_found_by_the_next_look_up_of_it() {
    let app = spawn_app().await;
    let stub = stub_allowing_duplicates();
    let (app_id, _, _) = joiners_claimed_together(&app, &stub, "rename").await;
    let (listings, _) = listings_and_look_ups(&stub);
    assert!(listings >= 1, "the target's listing was read (and kept)");
    let new_address = "rename-z@example.com";
    app.post_event(&event(
        "rename-move",
        "mover",
        "RENAME-A",
        "2026-11-02T09:00:00Z",
        json!({"email": new_address}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    let holding = |users: &[Value]| {
        users
            .iter()
            .filter(|u| u["userName"] == new_address)
            .map(id_text)
            .collect::<Vec<_>>()
    };
    let renamed = holding(&stub.users());
    assert_eq!(renamed.len(), 1, "A's account has the new address");
    app.post_event(&joiner(
        "rename-join",
        "RENAME-Z",
        "2026-11-02T10:00:00Z",
        json!({}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    assert_eq!(holding(&stub.users()), renamed, "no second account");
    let z = identity_id(&app, "RENAME-Z").await;
    let link = link_of(&app, "user", &z).await;
    assert!(
        link.as_ref().is_none_or(|l| l["target_id"].is_null()),
        "{link:?}"
    );
}

/// An account found in an answer more than a moment old (a kept listing, a look-up sent
/// ahead) may have become someone else's since: another writer renamed it. roster asks the
/// target again before it adopts: the renamed account is not touched, and the joiner gets an
/// account of their own.
#[tokio::test]
async fn an_account_found_in_an_older_answer_is_asked_about_again_before_it_is_adopted() {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour::default());
    // Listed with the others below, and nobody's yet.
    let theirs = stub.store(
        "u",
        json!({"schemas": [roster::scim::schemas::USER],
               "userName": "renamed-h@example.com",
               "name": {"givenName": "H", "familyName": "Hand"}, "active": true}),
    );
    let theirs_id = id_text(&theirs);
    let (app_id, _, people) = joiners_claimed_together(&app, &stub, "renamed").await;
    let (listings, _) = listings_and_look_ups(&stub);
    assert!(listings >= 1, "the target's listing was read (and kept)");
    // Another writer gives the account to someone else.
    let someone_else = {
        let mut users = stub.users.lock().unwrap();
        let account = users
            .iter_mut()
            .find(|u| id_text(u) == theirs_id)
            .expect("the account");
        account["userName"] = json!("someone-else@example.com");
        account["name"] = json!({"givenName": "Someone", "familyName": "Else"});
        account.clone()
    };
    // Older than an answer roster acts on without asking again.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    app.post_event(&joiner(
        "renamed-late",
        "RENAMED-H",
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    app.settled(&app_id, Duration::from_secs(30)).await;

    let users = stub.users();
    let now_theirs = users
        .iter()
        .find(|u| id_text(u) == theirs_id)
        .expect("still there");
    assert_eq!(
        now_theirs, &someone_else,
        "the renamed account is untouched"
    );
    let h = identity_id(&app, "RENAMED-H").await;
    let link = link_of(&app, "user", &h).await.expect("H's link");
    assert_ne!(link["target_id"].as_str(), Some(theirs_id.as_str()));
    // The people of the batch (one of them adopted the account made by hand), the renamed
    // account, and H's own.
    assert_eq!(users.len(), people.len() + 2, "{users:?}");
}

/// A listing that does not prove itself complete (an account left out of a page, a
/// `totalResults` above what it holds) answers nothing: the look-ups are made by filter,
/// and the joiner whose account exists is adopted, never created a second time.
#[tokio::test]
async fn a_listing_not_proven_complete_never_leads_to_a_second_account() {
    for (prefix, how) in [
        (
            "dropped",
            Misbehaviour {
                allows_duplicates: true,
                drops_from_listing: true,
                ..Misbehaviour::default()
            },
        ),
        (
            "overstated",
            Misbehaviour {
                allows_duplicates: true,
                overstates_listing_total: true,
                ..Misbehaviour::default()
            },
        ),
    ] {
        // An instance each: every app takes every joiner.
        let app = spawn_app().await;
        let stub = Stub::new(how);
        let (_, made_by_hand, people) = joiners_claimed_together(&app, &stub, prefix).await;
        let users = stub.users();
        assert_eq!(
            users.len(),
            people.len(),
            "{prefix}: one account each: {users:?}"
        );
        let c = identity_id(&app, &format!("{prefix}-C").to_uppercase()).await;
        let link = link_of(&app, "user", &c).await.expect("C's link");
        assert_eq!(
            link["target_id"].as_str(),
            Some(id_text(&made_by_hand).as_str()),
            "{prefix}"
        );
        let (listings, _) = listings_and_look_ups(&stub);
        assert!(listings >= 1, "{prefix}: the target's listing was read");
    }
}

/// Two people with one address, the second claimed while the first's create is under way:
/// the second's look-up ahead is answered before that create lands ("not found"), and must not
/// be used once the first's create is answered (it started before the look-up was asked, but
/// had not landed): asked again inside its turn, it finds the first's account, linked to
/// someone else. Never a second account on a target that allows one.
#[tokio::test]
async fn a_look_up_answered_while_a_create_of_its_value_was_under_way_is_asked_again() {
    one_account_for_two_people_with_one_address("under-way", false).await;
}

/// The same across a change of the app's settings: the second person's job runs in the app's
/// new runtime while the first's create, made in the old one, is held; it still waits for the
/// first's turn at the address. (Each runtime had turns of its own: a second account.)
#[tokio::test]
async fn a_change_of_settings_between_two_people_with_one_address_makes_no_second_account() {
    one_account_for_two_people_with_one_address("changed", true).await;
}

/// A joins and her create is held; B, with her address, joins meanwhile (after a change of the
/// app's settings, if `change_settings`). Ends with one account, B's look-up asked again after
/// A's create, and B's job dead with a conflict.
async fn one_account_for_two_people_with_one_address(prefix: &str, change_settings: bool) {
    let app = spawn_app().await;
    let stub = Stub::new(Misbehaviour {
        allows_duplicates: true,
        holds_posts: true,
        ..Misbehaviour::default()
    });
    let base = serve(stub.clone()).await;
    let app_id = app_on(
        &app,
        prefix,
        &base,
        // Longer than the waits below: the held create does not time out meanwhile.
        json!({"max_concurrency": 2, "timeout_ms": 60_000}),
    )
    .await;
    let address = format!("{prefix}@example.com");
    let person = |i: usize, employee: &str| {
        joiner(
            &format!("{prefix}{i}"),
            employee,
            "2026-11-01T09:00:00Z",
            json!({"email": address, "given_name": employee}),
        )
    };
    let look_ups = || {
        stub.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.query.contains(&address))
            .count()
    };
    app.post_event(&person(0, "A")).await;
    eventually("A's create held", Duration::from_secs(20), || async {
        stub.seen().iter().any(|s| s.method == "POST").then_some(())
    })
    .await;
    if change_settings {
        app.patch(
            &format!("/api/v1/apps/{app_id}"),
            &json!({"timeout_ms": 59_000}),
        )
        .await
        .expect(200);
    }
    // B is claimed now: its look-up ahead leaves while A's create is held.
    app.post_event(&person(1, "B")).await;
    eventually(
        "B looked up while A's create is held",
        Duration::from_secs(20),
        || async { (look_ups() >= 2).then_some(()) },
    )
    .await;
    stub.release_posts();
    app.settled(&app_id, Duration::from_secs(30)).await;
    let users = stub.users();
    assert_eq!(users.len(), 1, "one account for one address: {users:?}");
    assert!(look_ups() >= 3, "B asked again after A's create");
    let dead = app.get("/api/v1/jobs?state=dead").await.body;
    assert!(
        dead["items"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict")),
        "{dead}"
    );
}

/// Where the connector says the target's listings leave accounts out (its guests), no listing
/// answers a look-up: each is asked by filter, and the joiner whose account exists is adopted.
#[tokio::test]
async fn no_listing_answers_look_ups_where_listings_leave_accounts_out() {
    let app = spawn_app().await;
    let stub = stub_allowing_duplicates();
    let (_, made_by_hand, people) = joiners_claimed_together_with(
        &app,
        &stub,
        "guests",
        json!({"filter_or": false, "user_listings_complete": false}),
    )
    .await;
    assert_eq!(stub.users().len(), people.len(), "one account each");
    let c = identity_id(&app, "GUESTS-C").await;
    let link = link_of(&app, "user", &c).await.expect("C's link");
    assert_eq!(
        link["target_id"].as_str(),
        Some(id_text(&made_by_hand).as_str())
    );
    let (listings, look_ups) = listings_and_look_ups(&stub);
    assert_eq!(listings, 0, "no listing read");
    assert_eq!(look_ups, people.len(), "one look-up each");
}
