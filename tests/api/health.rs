use crate::helpers::spawn_app;

#[tokio::test]
async fn health_ready_metrics_and_docs_answer_without_a_key() {
    let app = spawn_app().await;
    let h = app.request("GET", "/healthz", None, None).await;
    assert_eq!((h.status, h.text.as_str()), (200, "ok"));
    let r = app.request("GET", "/readyz", None, None).await;
    assert_eq!((r.status, r.text.as_str()), (200, "ready"));
    let m = app.request("GET", "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    assert!(m.content_type.starts_with("text/plain"));
    let docs = app.request("GET", "/docs", None, None).await;
    assert_eq!(docs.status, 200);
    assert!(
        docs.text.to_lowercase().contains("swagger"),
        "{}",
        &docs.text[..docs.text.len().min(200)]
    );
    let spec = app
        .request("GET", "/openapi.json", None, None)
        .await
        .expect(200);
    assert!(spec["paths"]["/events:batch"]["post"].is_object());
    let served = serde_json::to_string_pretty(&spec).unwrap_or_default();
    assert_eq!(served, roster::api::spec_json(), "served = committed");
    assert!(
        docs.text.contains(&roster::api::spec_json()),
        "Swagger UI shows the same document"
    );
}

#[tokio::test]
async fn readyz_fails_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.db.clone().close().await.expect("close");
    let r = app.request("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    // The reason is for the operator's log: the probe says only which check failed.
    assert_eq!(r.text, "not ready: database unreachable");
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed");
    assert_eq!(
        committed.trim_end(),
        roster::api::spec_json().trim_end(),
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

/// Every operation of the generated document, as `(METHOD path, operation)`.
fn operations() -> Vec<(String, serde_json::Value)> {
    let spec: serde_json::Value =
        serde_json::from_str(&roster::api::spec_json()).expect("the document is JSON");
    let mut out = Vec::new();
    for (path, ops) in spec["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            out.push((format!("{} {path}", method.to_uppercase()), op.clone()));
        }
    }
    out
}

#[test]
fn every_operation_has_a_unique_lower_camel_case_operation_id() {
    let ops = operations();
    assert!(ops.len() > 20, "the document lists the operations");
    let mut seen = std::collections::BTreeMap::new();
    for (route, op) in &ops {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{route} has no operationId"));
        assert!(
            id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{route}: operationId `{id}` is not lowerCamelCase"
        );
        if let Some(other) = seen.insert(id.to_owned(), route.clone()) {
            panic!("operationId `{id}` is used by both {other} and {route}");
        }
    }
    assert_eq!(
        seen.get("createApp").map(String::as_str),
        Some("POST /apps")
    );
    assert_eq!(
        seen.get("postEventBatch").map(String::as_str),
        Some("POST /events:batch")
    );
}

#[test]
fn every_operation_declares_problem_json_errors() {
    let spec: serde_json::Value =
        serde_json::from_str(&roster::api::spec_json()).expect("the document is JSON");
    let problem = &spec["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem["properties"][field].is_object(),
            "Problem has `{field}`"
        );
    }
    for (route, op) in operations() {
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        let problem_4xx: Vec<&String> = responses
            .iter()
            .filter(|(status, answer)| {
                status.starts_with('4')
                    && answer["content"]["application/problem+json"]["schema"]["$ref"]
                        == "#/components/schemas/Problem"
            })
            .map(|(status, _)| status)
            .collect();
        assert!(
            !problem_4xx.is_empty(),
            "{route} declares no 4xx with problem+json"
        );
        for status in ["401", "403", "422", "500"] {
            assert!(responses.contains_key(status), "{route} lacks {status}");
        }
    }
}

#[test]
fn the_events_routes_declare_the_signature_header() {
    for route in ["POST /events", "POST /events:batch"] {
        let (_, op) = operations()
            .into_iter()
            .find(|(r, _)| r == route)
            .unwrap_or_else(|| panic!("{route} is documented"));
        let header = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "X-Roster-Signature")
            .unwrap_or_else(|| panic!("{route} declares X-Roster-Signature"));
        assert_eq!(header["in"], "header", "{route}");
        assert_ne!(
            header["required"], true,
            "{route}: optional without a secret"
        );
        let description = header["description"].as_str().unwrap_or_default();
        assert!(
            description.contains("t=<unix seconds>,v1=") && description.contains("HMAC-SHA256"),
            "{route}: {description}"
        );
    }
}

/// Every `allOf` in the document, with where it is.
fn all_ofs(value: &serde_json::Value, at: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(parts) = map.get("allOf") {
                out.push((at.to_owned(), parts.clone()));
            }
            for (k, v) in map {
                all_ofs(v, &format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                all_ofs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn described_component_fields_are_plain_refs_not_all_of() {
    // openapi-python-client refuses `allOf: [{$ref: <enum>}, {description}]` ("Cannot take
    // allOf a non-object") and drops every schema and operation that holds one.
    let spec: serde_json::Value =
        serde_json::from_str(&roster::api::spec_json()).expect("the document is JSON");
    let mut found = Vec::new();
    all_ofs(&spec, "", &mut found);
    assert!(found.is_empty(), "allOf left: {found:?}");
    let kind = &spec["components"]["schemas"]["AuthIn"]["properties"]["type"];
    assert_eq!(kind["$ref"], "#/components/schemas/AuthKind", "{kind}");
    assert!(
        kind["description"]
            .as_str()
            .is_some_and(|d| d.contains("bearer")),
        "{kind}"
    );
    let action = &spec["components"]["schemas"]["Deprovision"]["properties"]["action"];
    assert_eq!(
        action["$ref"], "#/components/schemas/DeprovisionAction",
        "{action}"
    );
    assert_eq!(action["default"], "deactivate", "{action}");
}
