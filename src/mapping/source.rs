//! Sources: the identity fields and `attributes.<key>` paths that mapping expressions and group
//! rules read.
//!
//! A source reads as text or as absent: empty strings, JSON `null`, arrays and objects are all
//! absent, numbers and booleans read as their JSON text (`42`, `true`). Treating "" as absent
//! everywhere is what lets `default(...)` and the renderer agree on what "no value" means.
use serde_json::Value;

use super::IdentityView;

/// The fixed identity fields, by the names mappings use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityField {
    Id,
    EmployeeId,
    UserName,
    Email,
    GivenName,
    FamilyName,
    DisplayName,
    Department,
    Title,
    ManagerEmployeeId,
    Status,
}

const FIELDS: [(&str, IdentityField); 11] = [
    ("id", IdentityField::Id),
    ("employee_id", IdentityField::EmployeeId),
    ("user_name", IdentityField::UserName),
    ("email", IdentityField::Email),
    ("given_name", IdentityField::GivenName),
    ("family_name", IdentityField::FamilyName),
    ("display_name", IdentityField::DisplayName),
    ("department", IdentityField::Department),
    ("title", IdentityField::Title),
    ("manager_employee_id", IdentityField::ManagerEmployeeId),
    ("status", IdentityField::Status),
];

/// `attributes.a.b` walks at most this many keys; deeper HR payloads are not worth a mapping.
const MAX_ATTRIBUTE_DEPTH: usize = 8;

/// Something an expression or a group rule can read from an identity.
///
/// Invariant: `Attribute` holds 1..=8 keys, each matching `[A-Za-z0-9_-]+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Field(IdentityField),
    /// Keys below `attributes`, e.g. `["org", "cost_center"]` for `attributes.org.cost_center`.
    Attribute(Vec<String>),
}

impl Source {
    /// Parses a source name: an identity field (`email`) or `attributes.<key>[.<key>...]`.
    pub fn parse(name: &str) -> Result<Self, String> {
        if let Some((_, field)) = FIELDS.iter().find(|(known, _)| *known == name) {
            return Ok(Self::Field(*field));
        }
        let Some(rest) = name.strip_prefix("attributes.") else {
            return Err(format!(
                "unknown source `{name}`; expected one of {} or attributes.<key>",
                FIELDS.map(|(known, _)| known).join(", ")
            ));
        };
        let keys: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if keys.len() > MAX_ATTRIBUTE_DEPTH {
            return Err(format!(
                "source `{name}` nests deeper than {MAX_ATTRIBUTE_DEPTH} keys"
            ));
        }
        if let Some(bad) = keys.iter().find(|key| !is_attribute_key(key)) {
            return Err(format!(
                "source `{name}`: attribute key `{bad}` must be non-empty and use only letters, digits, `_` and `-`"
            ));
        }
        Ok(Self::Attribute(keys))
    }

    /// The value as text, or `None` when absent or empty.
    #[must_use]
    pub fn read(&self, identity: &IdentityView) -> Option<String> {
        let text = match self {
            Self::Field(field) => match field {
                IdentityField::Id => Some(identity.id.as_str()),
                IdentityField::EmployeeId => Some(identity.employee_id.as_str()),
                IdentityField::Status => Some(identity.status.as_str()),
                IdentityField::UserName => identity.user_name.as_deref(),
                IdentityField::Email => identity.email.as_deref(),
                IdentityField::GivenName => identity.given_name.as_deref(),
                IdentityField::FamilyName => identity.family_name.as_deref(),
                IdentityField::DisplayName => identity.display_name.as_deref(),
                IdentityField::Department => identity.department.as_deref(),
                IdentityField::Title => identity.title.as_deref(),
                IdentityField::ManagerEmployeeId => identity.manager_employee_id.as_deref(),
            }
            .map(str::to_owned),
            Self::Attribute(keys) => {
                let mut node = &identity.attributes;
                for key in keys {
                    node = node.get(key)?;
                }
                match node {
                    Value::String(text) => Some(text.clone()),
                    Value::Number(number) => Some(number.to_string()),
                    Value::Bool(flag) => Some(flag.to_string()),
                    Value::Null | Value::Array(_) | Value::Object(_) => None,
                }
            }
        };
        text.filter(|text| !text.is_empty())
    }
}

/// Characters allowed in one `attributes.<key>` segment (and in expression identifiers).
pub(crate) fn is_attribute_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}
