//! The HTTP API (poem-openapi): handlers, API-key auth, problem+json. No SQL, no SCIM here.
pub mod admin;
pub mod apps;
pub mod auth;
pub mod body;
pub mod connectors;
pub mod delivery;
pub mod directory;
pub mod events;
mod examples;
pub mod guard;
pub mod paging;
pub mod problem;
pub mod reconcile;
pub mod snapshot_body;
pub mod snapshots;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};
use poem_openapi::{OpenApiService, Tags};

use crate::service::Roster;

#[derive(Tags)]
pub enum ApiTags {
    /// SCIM targets: registration, pause and resume.
    Apps,
    /// HR joiner / mover / leaver events.
    Events,
    /// Identities and groups.
    Directory,
    /// API keys and the audit trail.
    Admin,
    /// The provisioning log, dead letters, app delivery status.
    Delivery,
    /// Reconciliation runs: drift and ghost accounts found, fixed, or held for approval.
    Reconcile,
    /// The connector catalogue: SaaS targets with their documented limits and deviations.
    Connectors,
    /// HR snapshots: whole-population exports, diffed, guarded against mass leavers.
    Snapshots,
}

pub type Apis = (
    apps::AppsApi,
    events::EventsApi,
    directory::DirectoryApi,
    delivery::DeliveryApi,
    reconcile::ReconcileApi,
    snapshots::SnapshotsApi,
    admin::AdminApi,
    connectors::ConnectorsApi,
);

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            apps::AppsApi,
            events::EventsApi,
            directory::DirectoryApi,
            delivery::DeliveryApi,
            reconcile::ReconcileApi,
            snapshots::SnapshotsApi,
            admin::AdminApi,
            connectors::ConnectorsApi,
        ),
        "roster",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Identity provisioning orchestrator: HR events in, SCIM 2.0 out, drift reconciled. \
         Every route needs `Authorization: Bearer <api key>`; errors are RFC 9457 problem+json.",
    )
    .server("/api/v1")
}

/// The OpenAPI document, as `roster openapi` prints it, `/openapi.json` serves it and
/// `openapi/openapi.json` holds it.
#[must_use]
pub fn spec_json() -> String {
    document(&openapi_service().spec())
}

/// poem-openapi's document with its described references made plain (`inline_described_refs`)
/// and an example on every request body (`examples`). Keys come out sorted (serde_json's map);
/// the document is otherwise unchanged.
fn document(raw: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(raw) else {
        // poem-openapi printed it from its own types; never expected, but then serve it as is.
        return raw.to_owned();
    };
    inline_described_refs(&mut doc);
    examples::add_request_examples(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| raw.to_owned())
}

/// Keywords that only annotate a schema (merging them next to a `$ref` changes no validation),
/// and `nullable`, which makes the reference an `anyOf` of one.
const ANNOTATIONS: &[&str] = &[
    "nullable",
    "description",
    "default",
    "example",
    "title",
    "readOnly",
    "writeOnly",
    "deprecated",
];

/// poem-openapi writes a field whose type is a component and which carries a description or a
/// default as `{allOf: [{$ref}, {description, default}]}`. Generators that merge `allOf` as
/// objects (openapi-python-client: "Cannot take allOf a non-object") then drop every schema
/// holding an enum field so described, and every operation using one. This rewrites each such
/// schema, wherever it is, as `{$ref, description, default}` (a `$ref` with annotations beside
/// it, as OpenAPI 3.1 and JSON Schema allow), which those generators and the others read; a
/// nullable one (`#[oai(nullable)]`, a field that takes `null`) becomes
/// `{anyOf: [{$ref}], nullable, description}`, since a `nullable` beside a `$ref` is ignored.
/// Any other `allOf` is left alone.
fn inline_described_refs(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let plain = match map.get("allOf") {
                Some(Value::Array(parts)) => match parts.split_first() {
                    Some((Value::Object(first), rest))
                        if first.len() == 1
                            && first.get("$ref").is_some_and(Value::is_string)
                            && rest.iter().all(|part| {
                                part.as_object().is_some_and(|p| {
                                    p.keys().all(|k| ANNOTATIONS.contains(&k.as_str()))
                                })
                            }) =>
                    {
                        Some((first.clone(), rest.to_vec()))
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some((reference, annotations)) = plain {
                map.remove("allOf");
                for (key, annotation) in annotations
                    .into_iter()
                    .filter_map(|a| match a {
                        Value::Object(a) => Some(a),
                        _ => None,
                    })
                    .flatten()
                {
                    map.entry(key).or_insert(annotation);
                }
                if map.get("nullable") == Some(&Value::Bool(true)) {
                    // OpenAPI 3.0 ignores `nullable` beside a `$ref`, and so do the generators:
                    // the reference goes one level down, where `nullable` applies to it.
                    map.insert("anyOf".into(), Value::Array(vec![Value::Object(reference)]));
                } else {
                    map.extend(reference);
                }
            }
            map.values_mut().for_each(inline_described_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(inline_described_refs),
        _ => {}
    }
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(roster: Data<&Roster>) -> Response {
    match roster.ready().await {
        Ok(()) => "ready".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

#[handler]
fn metrics() -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics().render())
}

/// The whole HTTP surface: `/api/v1`, `/docs`, `/openapi.json`, `/healthz`, `/readyz`, `/metrics`.
pub fn app(roster: Roster) -> impl Endpoint {
    let service = openapi_service();
    // Swagger UI shows the same document as `/openapi.json` (poem-openapi embeds its own).
    let raw = service.spec();
    let spec = document(&raw);
    let docs_html = service.swagger_ui_html().replace(&raw, &spec);
    let docs = Route::new().at(
        "/",
        get(poem::endpoint::make_sync(move |_| {
            poem::web::Html(docs_html.clone())
        })),
    );
    let guard = guard::BodyGuard {
        webhook_secret: roster.config().hr_webhook_secret.clone(),
    };
    Route::new()
        .nest("/api/v1", service)
        .nest("/docs", docs)
        .at(
            "/openapi.json",
            get(poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            })),
        )
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .with(guard)
        .data(roster)
        .catch_all_error(problem::render_any_error)
}
