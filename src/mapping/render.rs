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
    // A delivery asks for its person's matching value several times (its look-up sent ahead,
    // its create, a look-up after a 409): only the mappings of that attribute are rendered.
    let resource = if rendered_by_its_mappings_alone(compiled, &path) {
        render_attribute(compiled, identity, &path)
    } else {
        render_user(compiled, identity)
    };
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

/// Whether the value at `path` in [`render_user`]'s resource comes from the mappings of its
/// top-level attribute only: a core attribute that none of the steps after the mappings
/// touches (`active`, the primary email, the role, `schemas`). Mappings write only under their
/// own top-level attribute.
fn rendered_by_its_mappings_alone(compiled: &CompiledMappings, path: &ScimPath) -> bool {
    let touched_after = ["active", "emails", "schemas"]
        .iter()
        .any(|attribute| path.attribute().eq_ignore_ascii_case(attribute));
    let role = compiled
        .role
        .as_ref()
        .is_some_and(|role| same_attribute(&role.target, path));
    path.schema().is_none() && !touched_after && !role
}

/// The part of [`render_user`]'s resource under `path`'s top-level attribute, when
/// [`rendered_by_its_mappings_alone`].
fn render_attribute(
    compiled: &CompiledMappings,
    identity: &IdentityView,
    path: &ScimPath,
) -> Value {
    let mut resource = Map::new();
    for entry in compiled
        .entries
        .iter()
        .filter(|entry| same_attribute(&entry.target, path))
    {
        if let Some(value) = mapped_value(&entry.value, &entry.target, identity) {
            entry.target.insert(&mut resource, value);
        }
    }
    Value::Object(resource)
}

fn same_attribute(a: &ScimPath, b: &ScimPath) -> bool {
    let schema = |p: &ScimPath| p.schema().map(str::to_ascii_lowercase);
    schema(a) == schema(b) && a.attribute().eq_ignore_ascii_case(b.attribute())
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
