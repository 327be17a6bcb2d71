//! Attribute mappings, role mapping, scope and group rules: pure functions, no IO, no clock.
//!
//! STUB: signatures are the contract; the implementation lands with the mapping work.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// roster's view of a person, as mapping expressions see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityView {
    pub id: String,
    pub employee_id: String,
    pub user_name: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub display_name: Option<String>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub manager_employee_id: Option<String>,
    /// Anything else HR sent: a JSON object.
    pub attributes: Value,
    /// `active` | `suspended` | `terminated`.
    pub status: String,
    /// Names of the roster groups the person is in.
    pub groups: Vec<String>,
}

/// One mapping entry: exactly one of `source`, `value`, `expression`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeMapping {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub group: String,
    pub value: String,
}

/// Group → role value; the first matching rule wins (rules are in precedence order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub rules: Vec<RoleRule>,
}

/// A rule group's rule: a comparison or `and`/`or`/`not` of rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum GroupRule {
    Compare {
        attribute: String,
        op: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
    And {
        and: Vec<GroupRule>,
    },
    Or {
        or: Vec<GroupRule>,
    },
    Not {
        not: Box<GroupRule>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MappingError {
    /// Where in the input, e.g. `mappings[2].expression`.
    pub path: String,
    pub message: String,
}

/// Mappings checked once and ready to render.
#[derive(Debug, Clone)]
pub struct CompiledMappings {
    pub mappings: Vec<AttributeMapping>,
    pub role_mapping: Option<RoleMapping>,
}

pub fn compile(
    mappings: &[AttributeMapping],
    role_mapping: Option<&RoleMapping>,
) -> Result<CompiledMappings, MappingError> {
    Ok(CompiledMappings {
        mappings: mappings.to_vec(),
        role_mapping: role_mapping.cloned(),
    })
}

pub fn validate_group_rule(_rule: &GroupRule) -> Result<(), MappingError> {
    Ok(())
}

#[must_use]
pub fn evaluate_group_rule(_rule: &GroupRule, _identity: &IdentityView) -> bool {
    false
}
