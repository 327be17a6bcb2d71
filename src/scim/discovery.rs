//! What a target says it supports (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`).
use serde::Serialize;
use serde_json::Value;

/// Discovered capabilities. Parsed leniently: a missing or odd field means "not supported",
/// never an error, because many targets fill these documents in carelessly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub patch: bool,
    pub bulk: bool,
    pub bulk_max_operations: Option<u64>,
    pub filter: bool,
    /// `filter.maxResults`: the most resources the target returns per page.
    pub filter_max_results: Option<u32>,
    pub change_password: bool,
    pub sort: bool,
    pub etag: bool,
    /// `authenticationSchemes[].type`, e.g. `oauthbearertoken`.
    pub auth_schemes: Vec<String>,
    /// `/ResourceTypes` names (`User`, `Group`); empty if the endpoint failed.
    pub resource_types: Vec<String>,
    /// `/Schemas` ids; empty if the endpoint failed.
    pub schemas: Vec<String>,
}

impl Default for Capabilities {
    /// What to assume of a target without a usable `/ServiceProviderConfig`: the RFC's
    /// mandatory core (PATCH and filter are optional in the RFC but nearly universal, and the
    /// quirks can turn them off), no ETags, no bulk.
    fn default() -> Self {
        Self {
            patch: true,
            bulk: false,
            bulk_max_operations: None,
            filter: true,
            filter_max_results: None,
            change_password: false,
            sort: false,
            etag: false,
            auth_schemes: Vec::new(),
            resource_types: Vec::new(),
            schemas: Vec::new(),
        }
    }
}

/// `doc`'s `key`, the name matched without regard to case (RFC 7643 §2.1).
fn field<'a>(doc: &'a Value, key: &str) -> Option<&'a Value> {
    doc.as_object().and_then(|o| super::filter::get_ci(o, key))
}

/// `true`, `"true"` and `"True"` are true; anything else is false.
fn flag(doc: &Value, section: &str) -> bool {
    match field(doc, section).and_then(|s| field(s, "supported")) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn number(doc: &Value, section: &str, name: &str) -> Option<u64> {
    match field(field(doc, section)?, name)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Capabilities {
    /// Reads a `/ServiceProviderConfig` document.
    #[must_use]
    pub fn from_service_provider_config(doc: &Value) -> Self {
        let auth_schemes = field(doc, "authenticationSchemes")
            .and_then(Value::as_array)
            .map(|schemes| {
                schemes
                    .iter()
                    .filter_map(|s| field(s, "type").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            patch: flag(doc, "patch"),
            bulk: flag(doc, "bulk"),
            bulk_max_operations: number(doc, "bulk", "maxOperations"),
            filter: flag(doc, "filter"),
            // A zero or absurd maxResults is ignored rather than trusted.
            filter_max_results: number(doc, "filter", "maxResults")
                .filter(|n| *n > 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            change_password: flag(doc, "changePassword"),
            sort: flag(doc, "sort"),
            etag: flag(doc, "etag"),
            auth_schemes,
            resource_types: Vec::new(),
            schemas: Vec::new(),
        }
    }

    /// Collects `name` (resource types) or `id` (schemas) from a list document, which may be a
    /// ListResponse or a bare array.
    #[must_use]
    pub(crate) fn names(doc: &Value, key: &str) -> Vec<String> {
        let items = field(doc, "Resources")
            .and_then(Value::as_array)
            .or_else(|| doc.as_array());
        items
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| field(i, key).and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_provider_config_parses_leniently() {
        let doc = json!({
            "patch": {"supported": true},
            "bulk": {"supported": true, "maxOperations": 1000, "maxPayloadSize": 1048576},
            "filter": {"supported": "True", "maxResults": 200},
            "changePassword": {"supported": false},
            "sort": {"supported": true},
            "etag": {"supported": true},
            "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer"}]
        });
        let caps = Capabilities::from_service_provider_config(&doc);
        assert!(caps.patch && caps.bulk && caps.filter && caps.sort && caps.etag);
        assert!(!caps.change_password);
        assert_eq!(caps.filter_max_results, Some(200));
        assert_eq!(caps.bulk_max_operations, Some(1000));
        assert_eq!(caps.auth_schemes, ["oauthbearertoken"]);

        let empty =
            Capabilities::from_service_provider_config(&json!({"filter": {"maxResults": 0}}));
        assert!(!empty.patch && !empty.etag && !empty.filter);
        assert_eq!(empty.filter_max_results, None);
        let odd = Capabilities::from_service_provider_config(&json!("nonsense"));
        assert!(!odd.patch);
    }

    #[test]
    fn discovery_documents_are_read_ignoring_the_case_of_names() {
        let doc = json!({
            "Patch": {"Supported": true},
            "FILTER": {"supported": true, "MaxResults": 50},
            "eTag": {"SUPPORTED": "true"},
            "AuthenticationSchemes": [{"Type": "oauthbearertoken"}]
        });
        let caps = Capabilities::from_service_provider_config(&doc);
        assert!(caps.patch && caps.filter && caps.etag);
        assert_eq!(caps.filter_max_results, Some(50));
        assert_eq!(caps.auth_schemes, ["oauthbearertoken"]);
        let list = json!({"resources": [{"Name": "User"}]});
        assert_eq!(Capabilities::names(&list, "name"), ["User"]);
    }

    #[test]
    fn names_come_from_list_responses_or_arrays() {
        let list = json!({"Resources": [{"name": "User"}, {"name": "Group"}]});
        assert_eq!(Capabilities::names(&list, "name"), ["User", "Group"]);
        let bare = json!([{"id": "urn:x"}]);
        assert_eq!(Capabilities::names(&bare, "id"), ["urn:x"]);
        assert!(Capabilities::names(&json!({}), "id").is_empty());
    }
}
