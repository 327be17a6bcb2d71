//! API keys on every route: `Authorization: Bearer <key>`; scopes checked per handler.
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::problem::ApiError;
use crate::service::{Permission, Principal, Roster};

/// A caller whose key was verified.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_api_key")]
pub struct ApiKey(pub Principal);

async fn check_api_key(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let roster = req
        .data::<Roster>()
        .ok_or_else(|| ApiError::invalid("server misconfigured: no service state"))?;
    match roster.authenticate(&bearer.token).await {
        Ok(Some(principal)) => Ok(principal),
        Ok(None) => Err(ApiError::unauthorized().into()),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

impl ApiKey {
    /// The principal, if it holds `permission`; else 403.
    pub fn require(&self, permission: Permission) -> Result<&Principal, ApiError> {
        self.0.require(permission).map_err(ApiError::from)?;
        Ok(&self.0)
    }
}
