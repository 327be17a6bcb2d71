//! The request body examples of the OpenAPI document, by operationId: the README's walk-through
//! requests, so the document, the README and Swagger UI show the same first steps. Each is sent
//! as it is to the API in `tests/api/openapi.rs`.
use serde_json::{Value, json};

/// The joiner of the README's walk-through.
fn joiner() -> Value {
    json!({
        "event_id": "evt-1", "type": "joiner", "occurred_at": "2026-11-23T09:00:00Z",
        "employee": {"employee_id": "E100", "user_name": "ada", "email": "ada@example.com",
                     "given_name": "Ada", "family_name": "Lovelace", "department": "Board",
                     "title": "Chair"}
    })
}

/// The example request body of `operation_id` in `media_type`, if the operation takes one.
fn request_example(operation_id: &str, media_type: &str) -> Option<Value> {
    Some(match operation_id {
        "createApiKey" => json!({"name": "hr-feed", "scopes": ["events:write"]}),
        "createApp" => json!({
            "name": "sherpany", "base_url": "https://scim.example.net/v2",
            "auth": {"type": "bearer", "token": "target-secret"},
            "rate_limit": {"per_second": 10, "burst": 20}, "max_concurrency": 4,
            "scope": {"email_domains": ["example.com"]},
            "mappings": [{"target": "userName", "source": "email"},
                         {"target": "name.givenName", "source": "given_name"},
                         {"target": "name.familyName", "source": "family_name"},
                         {"target": "emails[type eq \"work\"].value", "source": "email"},
                         {"target": "title", "source": "title"},
                         {"target": "externalId", "source": "employee_id"}],
            "role_mapping": {"target": "roles[primary eq true].value", "default": "member",
                             "rules": [{"group": "board-admins", "value": "admin"}]},
            "deprovision": {"action": "deactivate"}
        }),
        "updateApp" => json!({
            "rate_limit": {"per_second": 5, "burst": 10, "windows": [
                {"limit": 300, "window_seconds": 60},
                {"limit": 20, "window_seconds": 30, "operations": ["delete"]}
            ]},
            "rate_limit_group": "example-tenant",
            "role_mapping": null
        }),
        "resumeApp" => json!({"approve_deprovisions": true}),
        "provisionOnDemand" => json!({"identity_id": "E100"}),
        "startReconcileRun" => json!({"dry_run": true, "mode": "report"}),
        "postEvent" => joiner(),
        "postEventBatch" => json!({"events": [joiner(), {
            "event_id": "evt-2", "type": "leaver", "occurred_at": "2026-11-23T17:00:00Z",
            "employee": {"employee_id": "E100"}
        }]}),
        "createGroup" => json!({"name": "board-admins", "members": ["E100"]}),
        "updateGroup" => json!({"rule": {"attribute": "department", "op": "eq", "value": "Board"}}),
        "postHrSnapshot" => hr_snapshot_example(media_type)?,
        _ => return None,
    })
}

/// The nightly export of the README's HR snapshot section, in each format the route takes.
fn hr_snapshot_example(media_type: &str) -> Option<Value> {
    Some(match media_type {
        "text/csv" => Value::from(
            "employee_id,user_name,email,given_name,family_name,department,title\n\
             E100,ada,ada@example.com,Ada,Lovelace,Board,Chair\n",
        ),
        "application/x-ndjson" => Value::from(
            "{\"employee_id\": \"E100\", \"user_name\": \"ada\", \"email\": \"ada@example.com\", \
             \"department\": \"Board\", \"title\": \"Chair\"}\n",
        ),
        "application/json" => json!([{
            "employee_id": "E100", "user_name": "ada", "email": "ada@example.com",
            "given_name": "Ada", "family_name": "Lovelace", "department": "Board", "title": "Chair"
        }]),
        _ => return None,
    })
}

/// Puts each operation's example beside the schema of its request body (every media type).
pub(super) fn add_request_examples(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|ops| ops.values_mut())
    {
        let Some(operation_id) = operation
            .get("operationId")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        if let Some(content) = operation
            .pointer_mut("/requestBody/content")
            .and_then(Value::as_object_mut)
        {
            for (media_type, body) in content.iter_mut() {
                if let (Some(body), Some(example)) = (
                    body.as_object_mut(),
                    request_example(&operation_id, media_type),
                ) {
                    body.insert("example".into(), example);
                }
            }
        }
    }
}
