//! `/connectors`: the catalogue of SaaS targets an app can be built from.
use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::auth::ApiKey;
use super::problem::ApiError;
use crate::connectors::{self, Connector};
use crate::service::Permission;

pub struct ConnectorsApi;

#[OpenApi(prefix_path = "/connectors", tag = "ApiTags::Connectors")]
impl ConnectorsApi {
    /// The connector catalogue (scope `read`): each connector's base URL template, accepted
    /// auth types, default settings, vendor limits, what DELETE means there, and every fact
    /// with the vendor documentation it comes from.
    #[oai(path = "/", method = "get", operation_id = "listConnectors")]
    async fn list(&self, auth: ApiKey) -> Result<Json<Vec<Connector>>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        Ok(Json(connectors::catalogue().to_vec()))
    }

    /// One connector (scope `read`).
    #[oai(path = "/:name", method = "get", operation_id = "getConnector")]
    async fn get(&self, auth: ApiKey, name: Path<String>) -> Result<Json<Connector>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        connectors::find(&name.0)
            .map(|c| Json(c.clone()))
            .map_err(|e| ApiError::not_found(e.to_string()))
    }
}
