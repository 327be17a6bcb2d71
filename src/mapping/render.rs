//! The desired SCIM User for an identity.
use serde_json::{Map, Value};

use super::path::{CORE_USER_SCHEMA, ScimPath, parse_bool};
use super::{CompiledMappings, IdentityView, MappedValue};

/// Renders the SCIM User resource roster wants the target to hold for `identity`.
///
/// * `schemas`: the core User schema, then every extension a target path uses.
/// * Each mapping's value at its path; a mapping that evaluates to absent leaves the attribute
///   out. Filtered paths create or share the element they select, e.g.
///   `emails[type eq "work"].value` → `"emails": [{"type": "work", "value": …}]`.
/// * The first `emails` element is marked `primary: true` unless a mapping set `primary` on
///   some element: many targets insist on exactly one primary email.
/// * `active`: a mapping's boolean if one is mapped and yields `true`/`false`; otherwise
///   whether the identity's status is `active` (suspended and terminated people are inactive).
/// * The role value (see [`CompiledMappings::role_for`]) at the role mapping's target.
///
/// Deterministic: the same input always gives the same value and serialisation.
#[must_use]
pub fn render_user(compiled: &CompiledMappings, identity: &IdentityView) -> Value {
    let mut resource = Map::new();
    let mut active_mapped = false;
    for entry in &compiled.entries {
        let Some(value) = mapped_value(&entry.value, &entry.target, identity) else {
            continue;
        };
        active_mapped |= is_core_active(&entry.target);
        entry.target.insert(&mut resource, value);
    }
    if let Some(role) = &compiled.role
        && let Some(value) = compiled.role_for(identity)
    {
        role.target
            .insert(&mut resource, Value::String(value.to_owned()));
    }
    if !active_mapped {
        resource.insert(
            "active".to_owned(),
            Value::Bool(identity.status == "active"),
        );
    }
    mark_first_email_primary(&mut resource);

    let mut schemas = vec![Value::String(CORE_USER_SCHEMA.to_owned())];
    schemas.extend(
        compiled
            .extensions
            .iter()
            // An extension whose every mapping was absent is not declared either.
            .filter(|schema| resource.contains_key(schema.as_str()))
            .map(|schema| Value::String(schema.clone())),
    );
    resource.insert("schemas".to_owned(), Value::Array(schemas));
    Value::Object(resource)
}

/// The rendered value of the matching attribute (`target_attribute`, `userName` when empty),
/// as text; `None` when the path is invalid or the value is absent.
#[must_use]
pub fn render_matching_value(
    compiled: &CompiledMappings,
    identity: &IdentityView,
    target_attribute: &str,
) -> Option<String> {
    let target_attribute = match target_attribute.trim() {
        "" => "userName",
        trimmed => trimmed,
    };
    let path = ScimPath::parse(target_attribute).ok()?;
    let resource = render_user(compiled, identity);
    match path.lookup(&resource)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn mapped_value(value: &MappedValue, target: &ScimPath, identity: &IdentityView) -> Option<Value> {
    match value {
        MappedValue::Constant(constant) => Some(constant.clone()),
        MappedValue::Expression(expression) => {
            let text = expression.evaluate(identity)?;
            if target.is_boolean() {
                // Text that is not a boolean cannot be sent as one; leave the attribute out.
                parse_bool(&text).map(Value::Bool)
            } else {
                Some(Value::String(text))
            }
        }
    }
}

fn is_core_active(path: &ScimPath) -> bool {
    path.schema().is_none()
        && path.sub_attribute().is_none()
        && path.attribute().eq_ignore_ascii_case("active")
}

fn mark_first_email_primary(resource: &mut Map<String, Value>) {
    let Some(Value::Array(emails)) = resource.get_mut("emails") else {
        return;
    };
    if emails.iter().any(|email| email.get("primary").is_some()) {
        return;
    }
    if let Some(Value::Object(first)) = emails.first_mut() {
        first.insert("primary".to_owned(), Value::Bool(true));
    }
}
