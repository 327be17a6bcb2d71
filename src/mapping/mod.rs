//! Attribute mappings, role mapping, scope and group rules: pure functions, no IO, no clock.
//!
//! An app's `mappings` and `role_mapping` are [`compile`]d once (sources resolved, expressions
//! parsed, target paths validated) into [`CompiledMappings`]. Delivery then calls
//! [`render_user`] for the desired SCIM User, [`diff`] against the last-applied snapshot (or, in
//! reconcile, against what the target returned) and [`patch_changes`] for the minimal PATCH.
//! [`in_scope`] and [`domain_managed`] decide who an app is for; group rules
//! ([`evaluate_group_rule`], [`parse_group_rule`]) decide rule-group membership.
//!
//! * `source.rs`: identity fields and `attributes.<key>` sources
//! * `expr.rs`: the expression language (grammar in its module documentation)
//! * `path.rs`: [`ScimPath`], the target paths
//! * `render.rs`, `diff.rs`: desired resource, comparison, PATCH changes, snapshot hash
//! * `scope.rs`, `rules.rs`: app scope and group rules
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod diff;
mod expr;
mod path;
mod render;
mod rules;
mod scope;
mod source;
#[cfg(test)]
mod tests;

pub use diff::{Change, Difference, diff, keep_foreign_elements, patch_changes, snapshot_hash};
pub use expr::{Expression, ExpressionError, MAX_EXPRESSION_DEPTH, MAX_EXPRESSION_LEN};
pub use path::{CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA, FilterValue, ScimPath, ValueFilter};
pub use render::{render_matching_value, render_user};
pub use rules::{
    MAX_RULE_DEPTH, MAX_RULE_TEXT_LEN, evaluate_group_rule, group_rule_from_json, parse_group_rule,
    validate_group_rule,
};
pub use scope::{ScopeSpec, domain_managed, in_scope};
pub use source::{IdentityField, Source};

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

impl MappingError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// More mappings than this in one app is a mistake, not a configuration.
pub const MAX_MAPPINGS: usize = 256;

/// Mappings checked once and ready to render.
///
/// Invariant: every target path is valid, no two targets overlap, every expression parsed.
#[derive(Debug, Clone)]
pub struct CompiledMappings {
    mappings: Vec<AttributeMapping>,
    role_mapping: Option<RoleMapping>,
    entries: Vec<CompiledMapping>,
    role: Option<CompiledRole>,
    /// Every path `diff` compares: the mapped targets, `active` when not mapped, the role target.
    compared: Vec<ScimPath>,
    /// Extension schema URNs the targets use, in first-use order.
    extensions: Vec<String>,
}

#[derive(Debug, Clone)]
struct CompiledMapping {
    target: ScimPath,
    value: MappedValue,
}

#[derive(Debug, Clone)]
enum MappedValue {
    Expression(Expression),
    /// A scalar JSON constant (string, number or boolean).
    Constant(Value),
}

#[derive(Debug, Clone)]
struct CompiledRole {
    target: ScimPath,
    default: Option<String>,
    rules: Vec<RoleRule>,
}

impl CompiledMappings {
    /// The mappings as they were given.
    #[must_use]
    pub fn mappings(&self) -> &[AttributeMapping] {
        &self.mappings
    }

    /// The role mapping as it was given.
    #[must_use]
    pub fn role_mapping(&self) -> Option<&RoleMapping> {
        self.role_mapping.as_ref()
    }

    /// The paths [`diff`] compares: mapped targets, `active` (always), the role target.
    #[must_use]
    pub fn compared_paths(&self) -> &[ScimPath] {
        &self.compared
    }

    /// The role value an identity gets: the first rule whose group the identity is in (rules are
    /// in precedence order), else the default, else none.
    #[must_use]
    pub fn role_for(&self, identity: &IdentityView) -> Option<&str> {
        let role = self.role.as_ref()?;
        role.rules
            .iter()
            .find(|rule| identity.groups.contains(&rule.group))
            .map(|rule| rule.value.as_str())
            .or(role.default.as_deref())
    }
}

/// Checks mappings and the role mapping; errors point at the offending field, e.g.
/// `mappings[3].source` or `role_mapping.rules[0].group`.
pub fn compile(
    mappings: &[AttributeMapping],
    role_mapping: Option<&RoleMapping>,
) -> Result<CompiledMappings, MappingError> {
    if mappings.len() > MAX_MAPPINGS {
        return Err(MappingError::new(
            "mappings",
            format!("at most {MAX_MAPPINGS} mappings are allowed"),
        ));
    }
    let mut entries: Vec<CompiledMapping> = Vec::with_capacity(mappings.len());
    for (index, mapping) in mappings.iter().enumerate() {
        let field = |name: &str| format!("mappings[{index}].{name}");
        let target = ScimPath::parse(&mapping.target)
            .map_err(|message| MappingError::new(field("target"), message))?;
        if let Some(earlier) = entries
            .iter()
            .position(|entry| entry.target.overlaps(&target))
        {
            return Err(MappingError::new(
                field("target"),
                format!("`{target}` overlaps mappings[{earlier}].target"),
            ));
        }
        let value = match (&mapping.source, &mapping.value, &mapping.expression) {
            (Some(source), None, None) => Source::parse(source)
                .map(|source| MappedValue::Expression(Expression::from_source(source)))
                .map_err(|message| MappingError::new(field("source"), message))?,
            (None, Some(constant), None) => MappedValue::Constant(
                check_constant(constant, &target)
                    .map_err(|message| MappingError::new(field("value"), message))?,
            ),
            (None, None, Some(expression)) => Expression::parse(expression)
                .map(MappedValue::Expression)
                .map_err(|error| MappingError::new(field("expression"), error.to_string()))?,
            _ => {
                return Err(MappingError::new(
                    format!("mappings[{index}]"),
                    "exactly one of `source`, `value` or `expression` is required",
                ));
            }
        };
        entries.push(CompiledMapping { target, value });
    }

    let role = role_mapping
        .map(|role_mapping| compile_role(role_mapping, &entries))
        .transpose()?;

    let mut compared: Vec<ScimPath> = entries.iter().map(|entry| entry.target.clone()).collect();
    let active =
        ScimPath::parse("active").map_err(|message| MappingError::new("active", message))?;
    if !compared.iter().any(|path| path.overlaps(&active)) {
        compared.push(active);
    }
    if let Some(role) = &role {
        compared.push(role.target.clone());
    }
    let mut extensions: Vec<String> = Vec::new();
    for schema in compared.iter().filter_map(ScimPath::schema) {
        if !extensions
            .iter()
            .any(|known| known.eq_ignore_ascii_case(schema))
        {
            extensions.push(schema.to_owned());
        }
    }

    Ok(CompiledMappings {
        mappings: mappings.to_vec(),
        role_mapping: role_mapping.cloned(),
        entries,
        role,
        compared,
        extensions,
    })
}

fn compile_role(
    role_mapping: &RoleMapping,
    entries: &[CompiledMapping],
) -> Result<CompiledRole, MappingError> {
    let target = ScimPath::parse(&role_mapping.target)
        .map_err(|message| MappingError::new("role_mapping.target", message))?;
    if target.is_boolean() {
        return Err(MappingError::new(
            "role_mapping.target",
            format!("`{target}` is boolean; a role is text"),
        ));
    }
    if let Some(index) = entries
        .iter()
        .position(|entry| entry.target.overlaps(&target))
    {
        return Err(MappingError::new(
            "role_mapping.target",
            format!("`{target}` overlaps mappings[{index}].target"),
        ));
    }
    if role_mapping.default.as_deref() == Some("") {
        return Err(MappingError::new(
            "role_mapping.default",
            "must not be empty; leave it out for no default role",
        ));
    }
    for (index, rule) in role_mapping.rules.iter().enumerate() {
        if rule.group.is_empty() {
            return Err(MappingError::new(
                format!("role_mapping.rules[{index}].group"),
                "must not be empty",
            ));
        }
        if rule.value.is_empty() {
            return Err(MappingError::new(
                format!("role_mapping.rules[{index}].value"),
                "must not be empty",
            ));
        }
    }
    Ok(CompiledRole {
        target,
        default: role_mapping.default.clone(),
        rules: role_mapping.rules.clone(),
    })
}

/// Constants are scalars; a boolean target takes only `true`/`false` (or their text).
fn check_constant(constant: &Value, target: &ScimPath) -> Result<Value, String> {
    match constant {
        Value::String(text) if target.is_boolean() => path::parse_bool(text)
            .map(Value::Bool)
            .ok_or_else(|| format!("`{target}` is boolean; use true or false")),
        Value::Number(_) if target.is_boolean() => {
            Err(format!("`{target}` is boolean; use true or false"))
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(constant.clone()),
        Value::Null | Value::Array(_) | Value::Object(_) => {
            Err("a constant must be a string, a number or a boolean".to_owned())
        }
    }
}
