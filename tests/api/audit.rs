use serde_json::json;

use crate::helpers::{ADMIN, app_body, joiner, spawn_app};

#[tokio::test]
async fn every_write_through_the_api_leaves_an_audit_row_with_the_key() {
    let app = spawn_app().await;
    let writer = app.key(&["apps:write"]).await;
    let created = app
        .request(
            "POST",
            "/api/v1/apps",
            Some(&writer),
            Some(&app_body("audited", json!({}))),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    app.patch(&format!("/api/v1/apps/{id}"), &json!({"timeout_ms": 1000}))
        .await
        .expect(200);
    app.post(&format!("/api/v1/apps/{id}/pause"), &json!({}))
        .await
        .expect(200);
    app.post(&format!("/api/v1/apps/{id}/resume"), &json!({}))
        .await
        .expect(200);
    let g = app
        .post("/api/v1/groups", &json!({"name": "g", "members": []}))
        .await
        .expect(201);
    let gid = g["id"].as_str().unwrap_or_default().to_owned();
    app.patch(
        &format!("/api/v1/groups/{gid}"),
        &json!({"members": ["E1"]}),
    )
    .await
    .expect(200);
    app.delete(&format!("/api/v1/groups/{gid}"))
        .await
        .expect(204);
    app.post_event(&joiner("a1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.delete(&format!("/api/v1/apps/{id}")).await.expect(204);

    let page = app.get("/api/v1/audit?limit=100").await.expect(200);
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let actions: Vec<&str> = items
        .iter()
        .rev()
        .filter_map(|i| i["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "api_key.bootstrap_create",
            "api_key.create",
            "app.create",
            "app.update",
            "app.pause",
            "app.resume",
            "group.create",
            "group.update",
            "group.delete",
            "events.ingest",
            "app.delete"
        ]
    );
    let app_create = items
        .iter()
        .find(|i| i["action"] == "app.create")
        .cloned()
        .unwrap_or_default();
    assert_ne!(
        app_create["api_key_id"], "bootstrap",
        "made with the apps:write key"
    );
    assert!(app_create["api_key_id"].as_str().is_some());
    let update = items
        .iter()
        .find(|i| i["action"] == "app.update")
        .cloned()
        .unwrap_or_default();
    assert_eq!(update["before"]["config"]["timeout_ms"], 30000);
    assert_eq!(update["after"]["config"]["timeout_ms"], 1000);

    // Paging by cursor.
    let first = app.get("/api/v1/audit?limit=3").await.expect(200);
    let cursor = first["next_cursor"].as_i64().expect("a next page");
    let second = app
        .get(&format!("/api/v1/audit?limit=3&cursor={cursor}"))
        .await
        .expect(200);
    let last_of_first = first["items"][2]["id"].as_i64().expect("a full first page");
    let second_ids: Vec<i64> = second["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_i64().expect("an id"))
        .collect();
    assert_eq!(second_ids.len(), 3, "a full second page: {second}");
    assert!(
        second_ids.iter().all(|id| *id < last_of_first),
        "the second page continues after the first: {second_ids:?} after {last_of_first}"
    );

    // There is no route that changes the trail.
    for method in ["POST", "PATCH", "DELETE", "PUT"] {
        let answer = app
            .request(method, "/api/v1/audit", Some(ADMIN), Some(&json!({})))
            .await;
        assert_eq!(answer.status, 405, "{method} /audit: {}", answer.text);
    }
    // Reads are not audited.
    let before = app.count("audit").await;
    app.get("/api/v1/apps").await.expect(200);
    assert_eq!(app.count("audit").await, before);
}
