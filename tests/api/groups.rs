use serde_json::json;

use crate::helpers::{app_body, event, joiner, spawn_app, spawn_planner};

#[tokio::test]
async fn static_groups_hold_the_listed_employees() {
    let app = spawn_app().await;
    let g = app
        .post(
            "/api/v1/groups",
            &json!({"name": "board-admins", "members": ["E100", "E200"]}),
        )
        .await
        .expect(201);
    assert_eq!(g["kind"], "static");
    assert_eq!(g["members"], json!(["E100", "E200"]));
    let id = g["id"].as_str().unwrap_or_default().to_owned();
    let changed = app
        .patch(
            &format!("/api/v1/groups/{id}"),
            &json!({"members": ["E300"]}),
        )
        .await
        .expect(200);
    assert_eq!(changed["members"], json!(["E300"]));
    let listed = app.get("/api/v1/groups").await.expect(200);
    assert_eq!(listed["items"][0]["members"], json!(["E300"]));
    app.post(
        "/api/v1/groups",
        &json!({"name": "board-admins", "members": []}),
    )
    .await
    .problem(409);
    app.delete(&format!("/api/v1/groups/{id}"))
        .await
        .expect(204);
    app.get(&format!("/api/v1/groups/{id}")).await.problem(404);
}

#[tokio::test]
async fn rule_groups_follow_every_identity_change() {
    let app = spawn_app().await;
    app.post_event(&joiner(
        "j1",
        "E1",
        "2026-11-01T09:00:00Z",
        json!({"department": "Sales"}),
    ))
    .await;
    app.post_event(&joiner(
        "j2",
        "E2",
        "2026-11-01T09:00:00Z",
        json!({"department": "R&D"}),
    ))
    .await;
    let g = app
        .post("/api/v1/groups", &json!({"name": "sales", "rule": {"attribute": "department", "op": "eq", "value": "Sales"}}))
        .await
        .expect(201);
    assert_eq!(g["kind"], "rule");
    assert_eq!(g["members"], json!(["E1"]));
    let id = g["id"].as_str().unwrap_or_default().to_owned();

    // A mover into Sales joins; one out of it leaves; a joiner in Sales joins.
    app.post_event(&event(
        "m2",
        "mover",
        "E2",
        "2026-11-01T10:00:00Z",
        json!({"department": "Sales"}),
    ))
    .await;
    app.post_event(&event(
        "m1",
        "mover",
        "E1",
        "2026-11-01T10:00:00Z",
        json!({"department": "Legal"}),
    ))
    .await;
    app.post_event(&joiner(
        "j3",
        "E3",
        "2026-11-01T10:00:00Z",
        json!({"department": "sales"}),
    ))
    .await;
    let now = app.get(&format!("/api/v1/groups/{id}")).await.expect(200);
    assert_eq!(
        now["members"],
        json!(["E2", "E3"]),
        "eq is case-insensitive, as in SCIM"
    );
    let e2 = app.get("/api/v1/identities/E2").await.expect(200);
    assert_eq!(e2["groups"], json!(["sales"]));

    // The text form of a rule works too, and replacing the rule re-evaluates everyone.
    let text = app
        .patch(
            &format!("/api/v1/groups/{id}"),
            &json!({"rule": "department eq \"Legal\" or department eq \"R&D\""}),
        )
        .await
        .expect(200);
    assert_eq!(text["members"], json!(["E1"]));
}

#[tokio::test]
async fn bad_rules_and_members_are_refused_clearly() {
    let app = spawn_app().await;
    for (body, field) in [
        (
            json!({"name": "g", "rule": {"attribute": "shoe_size", "op": "eq", "value": "9"}}),
            "rule",
        ),
        (
            json!({"name": "g", "rule": {"attribute": "department", "op": "like", "value": "x"}}),
            "rule",
        ),
        (json!({"name": "g", "rule": "department eq"}), "rule"),
        (
            json!({"name": "g", "members": ["E1"], "rule": {"attribute": "department", "op": "pr"}}),
            "rule",
        ),
        (json!({"name": "g", "members": ["  padded"]}), "members[0]"),
        (json!({"name": "", "members": []}), "name"),
    ] {
        let detail = app.post("/api/v1/groups", &body).await.problem(422);
        assert!(detail.starts_with(field), "{body}: {detail}");
    }
    assert_eq!(app.count("roster_group").await, 0);
}

#[tokio::test]
async fn a_group_change_queues_syncs_in_apps_that_scope_or_push_it() {
    let app = spawn_planner().await;
    let scoped = app
        .create_app(&app_body(
            "scoped",
            json!({"scope": {"groups": ["board-room"]}}),
        ))
        .await;
    let pushing = app
        .create_app(&app_body("pushing", json!({"group_push": ["board-room"]})))
        .await;
    let unrelated = app
        .create_app(&app_body(
            "unrelated",
            json!({"scope": {"groups": ["other"]}}),
        ))
        .await;
    app.post_event(&joiner("j1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.rows("SELECT 1").await;
    let before = app.count("job").await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "board-room", "members": ["E1"]}),
    )
    .await
    .expect(201);
    let jobs = app
        .rows("SELECT app_id, resource_kind, resource_id FROM job ORDER BY id")
        .await;
    assert!(jobs.len() as i64 > before);
    let for_app = |id: &serde_json::Value, kind: &str| {
        jobs.iter()
            .filter(|j| &j["app_id"] == id && j["resource_kind"] == kind)
            .count()
    };
    assert_eq!(
        for_app(&scoped["id"], "user"),
        1,
        "E1 is now in scope of `scoped`"
    );
    assert_eq!(
        for_app(&pushing["id"], "group"),
        1,
        "the pushed group is queued"
    );
    assert!(
        jobs.iter()
            .any(|j| j["app_id"] == pushing["id"] && j["resource_id"] == "board-room")
    );
    assert_eq!(for_app(&unrelated["id"], "user"), 0);
}

/// The JSON form of a rule has the text form's limits (depth, and 4 KiB of text), checked
/// before the rule is built: a deep rule around a wide array once took 2 GB to refuse.
#[tokio::test]
async fn a_json_rule_is_held_to_the_limits_of_the_text_form() {
    let app = spawn_app().await;
    // Numbers, so that 120 000 values fit the 1 MiB body limit.
    let values: Vec<u32> = (0..120_000).collect();
    let wide =
        json!({"name": "wide", "rule": {"attribute": "department", "op": "in", "value": values}});
    let detail = app.post("/api/v1/groups", &wide).await.problem(422);
    assert!(
        detail.starts_with("rule.value") && detail.contains("4096 bytes"),
        "{detail}"
    );

    let mut deep = json!({"attribute": "department", "op": "eq", "value": "x"});
    for _ in 0..8 {
        deep = json!({"not": deep});
    }
    let detail = app
        .post("/api/v1/groups", &json!({"name": "deep", "rule": deep}))
        .await
        .problem(422);
    assert!(detail.contains("deeper than 8 levels"), "{detail}");

    // 120 `not`s around a 480 000-element array: just under the 1 MiB body limit.
    let mut bomb = json!(vec![0; 480_000]);
    for _ in 0..120 {
        bomb = json!({"not": bomb});
    }
    let detail = app
        .post("/api/v1/groups", &json!({"name": "bomb", "rule": bomb}))
        .await
        .problem(422);
    assert!(detail.contains("deeper than 8 levels"), "{detail}");

    // A rule within the limits, as JSON and as text, is still accepted.
    let fine: Vec<String> = (0..100).map(|i| format!("D{i}")).collect();
    app.post(
        "/api/v1/groups",
        &json!({"name": "fine", "rule": {"and": [{"attribute": "department", "op": "in", "value": fine}, {"not": {"attribute": "title", "op": "pr"}}]}}),
    )
    .await
    .expect(201);
    assert_eq!(app.count("roster_group").await, 1);
}

/// `GET /groups` is paged with a cursor, and no answer or audit row carries an unbounded
/// member list: a group shows its member count and its first 100 members; all of them are
/// paged at `/groups/{id}/members`.
#[tokio::test]
async fn group_lists_and_member_lists_are_paged() {
    let app = spawn_app().await;
    let many: Vec<String> = (0..250).map(|i| format!("M{i:03}")).collect();
    let big = app
        .post("/api/v1/groups", &json!({"name": "a-big", "members": many}))
        .await
        .expect(201);
    assert_eq!(big["member_count"], 250);
    assert_eq!(big["members"].as_array().map(Vec::len), Some(100));
    assert_eq!(big["members"][0], "M000");
    for name in ["b-small", "c-empty"] {
        app.post("/api/v1/groups", &json!({"name": name, "members": if name == "b-small" { json!(["S1"]) } else { json!([]) }}))
            .await
            .expect(201);
    }

    let first = app.get("/api/v1/groups?limit=2").await.expect(200);
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|g| g["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&first), ["a-big", "b-small"]);
    assert_eq!(first["items"][0]["member_count"], 250);
    assert_eq!(
        first["items"][0]["members"].as_array().map(Vec::len),
        Some(100)
    );
    assert_eq!(first["items"][1]["members"], json!(["S1"]));
    let cursor = first["next_cursor"].as_str().unwrap_or_default().to_owned();
    let second = app
        .get(&format!("/api/v1/groups?limit=2&cursor={cursor}"))
        .await
        .expect(200);
    assert_eq!(names(&second), ["c-empty"]);
    assert!(second.get("next_cursor").is_none(), "{second}");
    app.get("/api/v1/groups?limit=0").await.problem(400);

    let id = big["id"].as_str().unwrap_or_default().to_owned();
    let page = app
        .get(&format!("/api/v1/groups/{id}/members?limit=200"))
        .await
        .expect(200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(200));
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    assert_eq!(cursor, "M199");
    let rest = app
        .get(&format!(
            "/api/v1/groups/{id}/members?limit=200&cursor={cursor}"
        ))
        .await
        .expect(200);
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(50));
    assert_eq!(rest["items"][49], "M249");
    app.get("/api/v1/groups/nope/members").await.problem(404);

    // The audit rows of the group's changes hold the count and at most 100 members.
    app.patch(
        &format!("/api/v1/groups/{id}"),
        &json!({"name": "a-bigger"}),
    )
    .await
    .expect(200);
    let audit = app.get("/api/v1/audit?limit=10").await.expect(200);
    let rows: Vec<&serde_json::Value> = audit["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|r| r["object_id"] == id.as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(rows.len(), 2, "{audit}");
    for row in rows {
        for side in ["before", "after"] {
            if row[side].is_null() {
                continue;
            }
            assert_eq!(row[side]["member_count"], 250, "{row}");
            assert_eq!(
                row[side]["members"].as_array().map(Vec::len),
                Some(100),
                "{row}"
            );
        }
    }
}
