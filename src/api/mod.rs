//! The HTTP API (poem-openapi): handlers, API-key auth, problem+json. No SQL, no SCIM here.
pub mod admin;
pub mod apps;
pub mod auth;
pub mod body;
pub mod delivery;
pub mod directory;
pub mod events;
pub mod guard;
pub mod paging;
pub mod problem;
pub mod reconcile;

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
}

pub type Apis = (
    apps::AppsApi,
    events::EventsApi,
    directory::DirectoryApi,
    delivery::DeliveryApi,
    reconcile::ReconcileApi,
    admin::AdminApi,
);

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            apps::AppsApi,
            events::EventsApi,
            directory::DirectoryApi,
            delivery::DeliveryApi,
            reconcile::ReconcileApi,
            admin::AdminApi,
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

/// The OpenAPI document, as `roster openapi` prints it and `openapi/openapi.json` holds it.
#[must_use]
pub fn spec_json() -> String {
    openapi_service().spec()
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
    let docs = service.swagger_ui();
    let spec = service.spec_endpoint();
    let guard = guard::BodyGuard {
        webhook_secret: roster.config().hr_webhook_secret.clone(),
    };
    Route::new()
        .nest("/api/v1", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .with(guard)
        .data(roster)
        .catch_all_error(problem::render_any_error)
}
