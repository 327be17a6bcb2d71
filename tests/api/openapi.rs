//! The OpenAPI document against the running API: answers are what their operation declares,
//! and the request examples are accepted. (The document's own shape is tested in `health`.)
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Answer, TestApp, dev_target, eventually, spawn_app};

fn document() -> Value {
    serde_json::from_str(&roster::api::spec_json()).expect("the document is JSON")
}

/// The operation named `operation_id`, with its method and path.
fn operation<'a>(spec: &'a Value, operation_id: &str) -> (String, String, &'a Value) {
    for (path, ops) in spec["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            if op["operationId"] == operation_id {
                return (method.to_uppercase(), path.clone(), op);
            }
        }
    }
    panic!("no operation {operation_id}")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Where `value` departs from `schema` (OpenAPI 3.0): a `null` not declared `nullable`, a
/// wrong type, a missing required field, a field the schema does not declare, a value outside
/// an enum. A schema without a type (`{}`) takes anything.
fn departures(spec: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        if schema["nullable"] != true && schema.as_object().is_some_and(|s| !s.is_empty()) {
            out.push(format!("{at}: null, but the document does not allow null"));
        }
        return;
    }
    if let Some(arms) = schema["anyOf"].as_array() {
        let fitting = arms.iter().any(|arm| {
            let mut inner = Vec::new();
            departures(spec, arm, value, at, &mut inner);
            inner.is_empty()
        });
        if !fitting {
            out.push(format!("{at}: {value} fits none of {arms:?}"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let fits = match schema["type"].as_str() {
        None => true,
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => {
            for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                departures(spec, &schema["items"], item, &format!("{at}[{i}]"), out);
            }
            value.is_array()
        }
        Some("object") => {
            let properties = schema["properties"].as_object();
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if value.get(name).is_none() {
                    out.push(format!("{at}.{name}: required, but absent"));
                }
            }
            for (name, field) in value.as_object().into_iter().flatten() {
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => {
                        departures(spec, field_schema, field, &format!("{at}.{name}"), out);
                    }
                    None if properties.is_some()
                        && schema.get("additionalProperties").is_none() =>
                    {
                        out.push(format!("{at}.{name}: not in the document"));
                    }
                    None => {}
                }
            }
            value.is_object()
        }
        Some(other) => {
            out.push(format!("{at}: no check for type {other}"));
            true
        }
    };
    if !fits {
        out.push(format!("{at}: {value} is not of type {}", schema["type"]));
    }
}

/// Asserts that `answer` is a status `operation_id` declares, with a body its schema describes.
fn conforms(spec: &Value, operation_id: &str, answer: &Answer) {
    let (method, path, op) = operation(spec, operation_id);
    let declared = &op["responses"][answer.status.to_string()];
    assert!(
        declared.is_object(),
        "{method} {path} answered {}, which it does not declare: {}",
        answer.status,
        answer.text
    );
    let Some((media_type, content)) = declared["content"]
        .as_object()
        .and_then(|c| c.iter().next())
    else {
        assert!(answer.text.is_empty(), "{method} {path}: {}", answer.text);
        return;
    };
    let wanted = media_type.split(';').next().unwrap_or_default();
    assert!(
        answer.content_type.starts_with(wanted),
        "{method} {path} {}: content type {} instead of {wanted}",
        answer.status,
        answer.content_type
    );
    let mut found = Vec::new();
    departures(
        spec,
        &content["schema"],
        &answer.body,
        operation_id,
        &mut found,
    );
    assert!(
        found.is_empty(),
        "{method} {path} {}: the answer departs from the document: {found:#?}\n{}",
        answer.status,
        answer.text
    );
}

/// Asserts that `body` is a request body the document describes for `operation_id`.
fn documented_request(spec: &Value, operation_id: &str, body: &Value) {
    let (method, path, op) = operation(spec, operation_id);
    let schema = op["requestBody"]["content"]
        .as_object()
        .and_then(|c| c.values().next())
        .map(|m| m["schema"].clone())
        .unwrap_or_else(|| panic!("{method} {path} takes a body"));
    let mut found = Vec::new();
    departures(spec, &schema, body, operation_id, &mut found);
    assert!(
        found.is_empty(),
        "{method} {path}: a body roster accepts departs from the document: {found:#?}"
    );
}

/// A person with only some fields, linked in an app on a dev-target, a dry reconcile run and a
/// provision on demand: every answer read along the way is checked against the document.
#[tokio::test]
async fn answers_are_what_the_document_declares() {
    let spec = document();
    let target = dev_target("t").await;
    let app = spawn_app().await;
    let created = app
        .post(
            "/api/v1/apps",
            &crate::helpers::app_body(
                "described",
                json!({"base_url": target.base_url(), "auth": {"type": "bearer", "token": "t"},
                       "role_mapping": {"target": "roles[primary eq true].value", "default": "member"}}),
            ),
        )
        .await;
    conforms(&spec, "createApp", &created);
    let app_id = created.body["id"].as_str().unwrap_or_default().to_owned();
    // Only the fields a joiner must have: the others are absent in the identity.
    let posted = app
        .post(
            "/api/v1/events",
            &json!({"event_id": "e1", "type": "joiner", "occurred_at": "2026-11-23T09:00:00Z",
                    "employee": {"employee_id": "E1", "email": "e1@example.com"}}),
        )
        .await;
    conforms(&spec, "postEvent", &posted);
    let person = eventually("E1 linked", Duration::from_secs(30), || async {
        let person = app.get("/api/v1/identities/E1").await;
        (person.body["links"][0]["state"] == "linked").then_some(person)
    })
    .await;
    conforms(&spec, "getIdentity", &person);
    app.settled_all(Duration::from_secs(30)).await;

    let run = app
        .post(
            &format!("/api/v1/apps/{app_id}/reconcile"),
            &json!({"dry_run": true}),
        )
        .await;
    conforms(&spec, "startReconcileRun", &run);
    let run_id = run.body["id"].as_str().unwrap_or_default().to_owned();
    let report = eventually("the run to finish", Duration::from_secs(30), || async {
        let report = app.get(&format!("/api/v1/reconcile-runs/{run_id}")).await;
        (report.body["state"] != "running").then_some(report)
    })
    .await;
    conforms(&spec, "getReconcileRun", &report);
    let on_demand = app
        .post(
            &format!("/api/v1/apps/{app_id}/provision-on-demand"),
            &json!({"identity_id": "E1"}),
        )
        .await;
    conforms(&spec, "provisionOnDemand", &on_demand);

    for (operation_id, path) in [
        ("listApps", "/api/v1/apps".to_owned()),
        ("getApp", format!("/api/v1/apps/{app_id}")),
        ("getAppStatus", format!("/api/v1/apps/{app_id}/status")),
        ("listIdentities", "/api/v1/identities".to_owned()),
        ("listOperations", "/api/v1/operations".to_owned()),
        ("listJobs", "/api/v1/jobs".to_owned()),
        ("listAuditEntries", "/api/v1/audit".to_owned()),
        ("listApiKeys", "/api/v1/api-keys".to_owned()),
        ("listReconcileRuns", "/api/v1/reconcile-runs".to_owned()),
        ("getIdentity", "/api/v1/identities/nobody".to_owned()),
    ] {
        conforms(&spec, operation_id, &app.get(&path).await);
    }
    // Fields that `null` clears are declared nullable, so a generated client can send it.
    let mover = json!({"event_id": "e2", "type": "mover", "occurred_at": "2026-11-23T10:00:00Z",
                       "employee": {"employee_id": "E1", "title": null, "attributes": null}});
    documented_request(&spec, "postEvent", &mover);
    conforms(
        &spec,
        "postEvent",
        &app.post("/api/v1/events", &mover).await,
    );
    let clear = json!({"role_mapping": null});
    documented_request(&spec, "updateApp", &clear);
    let updated = app.patch(&format!("/api/v1/apps/{app_id}"), &clear).await;
    conforms(&spec, "updateApp", &updated);
    assert!(
        updated.body.get("role_mapping").is_none(),
        "{}",
        updated.text
    );

    let pause = app
        .post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await;
    conforms(&spec, "pauseApp", &pause);
    conforms(
        &spec,
        "getAppStatus",
        &app.get(&format!("/api/v1/apps/{app_id}/status")).await,
    );
    // A declared problem+json error, with its Problem body.
    let invalid = app
        .post(
            "/api/v1/apps",
            &json!({"name": "x", "base_url": target.base_url(), "auth": {"type": "bearer"}}),
        )
        .await;
    assert_eq!(invalid.status, 422, "{}", invalid.text);
    conforms(&spec, "createApp", &invalid);
}

/// The request examples in the document, sent as they are, to existing resources.
#[tokio::test]
async fn every_request_body_example_is_accepted() {
    let spec = document();
    let app = spawn_app().await;
    let mut found = 0;
    for (_, ops) in spec["paths"].as_object().into_iter().flatten() {
        for (_, op) in ops.as_object().into_iter().flatten() {
            let Some(content) = op["requestBody"]["content"].as_object() else {
                continue;
            };
            let operation_id = op["operationId"].as_str().unwrap_or_default();
            for (media_type, body) in content {
                assert!(
                    body["example"].is_object()
                        || body["example"].is_array()
                        || body["example"].is_string(),
                    "{operation_id} ({media_type}) has no request example"
                );
            }
            found += 1;
        }
    }
    assert!(found >= 10, "request bodies found: {found}");

    // In an order that makes each example's resources exist: the app, then E100, then the rest.
    let example = |operation_id: &str| -> (String, Value) {
        let (method, _, op) = operation(&spec, operation_id);
        let content = op["requestBody"]["content"].as_object().cloned();
        let body = content
            .and_then(|c| c.values().next().map(|m| m["example"].clone()))
            .unwrap_or_else(|| panic!("{operation_id} has an example"));
        (method, body)
    };
    let app: &TestApp = &app;
    let send = |operation_id: &'static str, path: String| {
        let (method, body) = example(operation_id);
        async move {
            let answer = app
                .request(&method, &path, Some(crate::helpers::ADMIN), Some(&body))
                .await;
            // Refusals of the body itself, or of the ids the examples refer to.
            assert!(
                ![400, 404, 413, 415, 422].contains(&answer.status),
                "{operation_id}: its example was refused: {} {}",
                answer.status,
                answer.text
            );
            answer
        }
    };
    send("createApiKey", "/api/v1/api-keys".into()).await;
    let created = send("createApp", "/api/v1/apps".into()).await;
    let app_id = created.body["id"].as_str().unwrap_or_default().to_owned();
    send("updateApp", format!("/api/v1/apps/{app_id}")).await;
    // The example's target is not on this machine: point the app at a dev-target before any
    // delivery, so the examples that call the target succeed.
    let target = dev_target("t").await;
    app.patch(
        &format!("/api/v1/apps/{app_id}"),
        &json!({"base_url": target.base_url(), "auth": {"type": "bearer", "token": "t"}}),
    )
    .await
    .expect(200);
    send("postEvent", "/api/v1/events".into()).await;
    let group = send("createGroup", "/api/v1/groups".into()).await;
    let group_id = group.body["id"].as_str().unwrap_or_default().to_owned();
    send("updateGroup", format!("/api/v1/groups/{group_id}")).await;
    // The guard does not hold the app, so approving is a 409 (a state conflict).
    let resumed = send("resumeApp", format!("/api/v1/apps/{app_id}/resume")).await;
    assert_eq!(resumed.status, 409, "{}", resumed.text);
    // Provision on demand is refused while a job of the person runs.
    app.settled(&app_id, Duration::from_secs(30)).await;
    let provisioned = send(
        "provisionOnDemand",
        format!("/api/v1/apps/{app_id}/provision-on-demand"),
    )
    .await;
    assert_eq!(provisioned.status, 200, "{}", provisioned.text);
    let run = send(
        "startReconcileRun",
        format!("/api/v1/apps/{app_id}/reconcile"),
    )
    .await;
    assert_eq!(run.status, 202, "{}", run.text);
    // evt-1 again (a duplicate) and the leaver.
    let batch = send("postEventBatch", "/api/v1/events:batch".into()).await;
    assert_eq!(batch.status, 202, "{}", batch.text);
    // The JSON form of the snapshot example, as a dry run: E100 comes back, unchanged or moved.
    let snapshot = send("postHrSnapshot", "/api/v1/hr/snapshots?dry_run=true".into()).await;
    assert_eq!(snapshot.status, 200, "{}", snapshot.text);
    assert_eq!(
        batch.body["results"][1]["result"], "applied",
        "{}",
        batch.text
    );
}

/// Every operation: one declared tag, a one-line summary, and a description that names the
/// scope it needs.
#[test]
fn every_operation_has_a_tag_a_one_line_summary_and_its_scope() {
    let spec = document();
    let tags: Vec<&str> = spec["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut summaries = std::collections::BTreeMap::new();
    let mut operations = 0;
    for (path, ops) in spec["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            operations += 1;
            let route = format!("{} {path}", method.to_uppercase());
            let op_tags: Vec<&str> = op["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                op_tags.len() == 1 && tags.contains(&op_tags[0]),
                "{route}: tags {op_tags:?}, declared {tags:?}"
            );
            let summary = op["summary"].as_str().unwrap_or_default();
            assert!(
                !summary.is_empty()
                    && !summary.contains('\n')
                    && summary.len() <= 60
                    && !summary.ends_with('.'),
                "{route}: summary {summary:?} is not one short line"
            );
            if let Some(other) = summaries.insert(summary.to_owned(), route.clone()) {
                panic!("{route} and {other} share the summary {summary:?}");
            }
            let description = op["description"].as_str().unwrap_or_default();
            assert!(
                description.starts_with("Scope `"),
                "{route}: the description does not start with the scope: {description:?}"
            );
        }
    }
    assert!(operations > 20, "operations: {operations}");
}
