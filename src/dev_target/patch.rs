//! The dev-target's PATCH (RFC 7644 §3.5.2): reads a PatchOp body and applies it to a stored
//! resource. Paths are parsed by the `scim_v2` crate and applied here.
//!
//! Shares no code with roster's client (`scim::patch`), for the same reason as `filter`: the
//! dev-target is the oracle the tests check roster against.
use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, PatchPath, ValFilter};
use serde_json::{Map, Value};

use super::filter::{element_matches, get_ci, is_extension_urn};
use super::store::Refusal;

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// One operation of a PatchOp body, its path parsed.
#[derive(Debug)]
pub struct Operation {
    op: Op,
    /// The path as sent, and as parsed.
    path: Option<(String, PatchPath)>,
    value: Option<Value>,
}

impl Operation {
    /// The attribute the operation names, for the schema check.
    pub fn attribute(&self) -> Option<&AttrPath> {
        self.path.as_ref().map(|(_, p)| match p {
            PatchPath::Attr(a) => a,
            PatchPath::Value(v) => &v.attr,
        })
    }

    /// The path as sent.
    pub fn raw_path(&self) -> Option<&str> {
        self.path.as_ref().map(|(raw, _)| raw.as_str())
    }
}

fn syntax(detail: impl Into<String>) -> Refusal {
    Refusal::new(400, Some("invalidSyntax"), detail)
}

fn no_target(detail: impl Into<String>) -> Refusal {
    Refusal::new(400, Some("noTarget"), detail)
}

fn invalid_value(detail: impl Into<String>) -> Refusal {
    Refusal::new(400, Some("invalidValue"), detail)
}

fn invalid_path(detail: impl Into<String>) -> Refusal {
    Refusal::new(400, Some("invalidPath"), detail)
}

/// Reads a PatchOp body. RFC 7644 §3.5.2: `schemas` must name the PatchOp message and
/// `Operations` hold one or more operations; a `remove` needs a path; `add` and `replace` a value.
pub fn parse(body: &Value) -> Result<Vec<Operation>, Refusal> {
    let object = body
        .as_object()
        .ok_or_else(|| syntax("a PatchOp body is a JSON object"))?;
    let names_patch_op = get_ci(object, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(PATCH_OP)))
        });
    if !names_patch_op {
        return Err(syntax(format!("`schemas` must be [\"{PATCH_OP}\"]")));
    }
    let operations = get_ci(object, "Operations")
        .and_then(Value::as_array)
        .filter(|ops| !ops.is_empty())
        .ok_or_else(|| syntax("`Operations` must be a non-empty array"))?;
    operations
        .iter()
        .map(|raw| {
            let raw = raw
                .as_object()
                .ok_or_else(|| syntax("each operation is an object"))?;
            let op_name = get_ci(raw, "op").and_then(Value::as_str).unwrap_or("");
            // Operation names are matched ignoring case, as servers do for Entra's `Replace`.
            let op = match op_name.to_ascii_lowercase().as_str() {
                "add" => Op::Add,
                "replace" => Op::Replace,
                "remove" => Op::Remove,
                _ => return Err(syntax(format!("unknown op `{op_name}`"))),
            };
            let path = match get_ci(raw, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => {
                    let parsed = text
                        .parse::<PatchPath>()
                        .map_err(|e| invalid_path(format!("invalid path `{text}`: {e}")))?;
                    Some((text.clone(), parsed))
                }
                Some(_) => return Err(invalid_path("`path` must be a string")),
            };
            let value = get_ci(raw, "value").cloned();
            match (op, &path, &value) {
                (Op::Remove, None, _) => Err(no_target("a remove needs a path")),
                (Op::Add | Op::Replace, _, None) => {
                    Err(invalid_value(format!("{op_name} needs a value")))
                }
                _ => Ok(Operation { op, path, value }),
            }
        })
        .collect()
}

/// The key `key` is stored under (ignoring case), or `key` itself when absent.
fn stored_key(object: &Map<String, Value>, key: &str) -> String {
    object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(key))
        .cloned()
        .unwrap_or_else(|| key.to_owned())
}

/// Two elements of a multi-valued attribute are the same when equal, or when both carry the
/// same `value` (a member, an email).
fn same_element(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let value = |v: &Value| v.as_object().and_then(|o| get_ci(o, "value")).cloned();
    matches!((value(a), value(b)), (Some(x), Some(y)) if x == y)
}

/// Sets an attribute as `add` or `replace` does (RFC 7644 §3.5.2.1, §3.5.2.3): `add` appends
/// to a multi-valued attribute (skipping values already there), `replace` replaces the list;
/// both merge the sub-attributes of a complex one; anything else is set.
fn set(object: &mut Map<String, Value>, name: &str, value: Value, op: Op) {
    let key = stored_key(object, name);
    match (object.get_mut(&key), value, op) {
        (Some(Value::Array(items)), value, Op::Add) => {
            let new = match value {
                Value::Array(new) => new,
                single => vec![single],
            };
            for element in new {
                if !items.iter().any(|i| same_element(i, &element)) {
                    items.push(element);
                }
            }
        }
        (Some(Value::Object(existing)), Value::Object(fields), _) => {
            for (k, v) in fields {
                let sk = stored_key(existing, &k);
                existing.insert(sk, v);
            }
        }
        (_, value, _) => {
            object.insert(key, value);
        }
    }
}

fn read_only(path: &AttrPath) -> bool {
    path.uri.is_none()
        && (path.name.eq_ignore_ascii_case("id") || path.name.eq_ignore_ascii_case("meta"))
}

/// The object an attribute path lives in: an extension's own object, else the resource.
fn container<'a>(
    root: &'a mut Map<String, Value>,
    path: &AttrPath,
    create: bool,
) -> Result<Option<&'a mut Map<String, Value>>, Refusal> {
    let Some(uri) = &path.uri else {
        return Ok(Some(root));
    };
    let key = stored_key(root, uri);
    if !is_extension_urn(uri) && !root.contains_key(&key) {
        // A core schema's URN only qualifies a top-level attribute.
        return Ok(Some(root));
    }
    if !root.contains_key(&key) {
        if !create {
            return Ok(None);
        }
        root.insert(key.clone(), Value::Object(Map::new()));
    }
    match root.get_mut(&key) {
        Some(Value::Object(ext)) => Ok(Some(ext)),
        _ => Err(invalid_path(format!("`{uri}` is not an object"))),
    }
}

/// Applies `operations` in order. On error the resource may be partly changed: callers apply
/// to a copy.
pub fn apply(resource: &mut Value, operations: &[Operation]) -> Result<(), Refusal> {
    let root = resource
        .as_object_mut()
        .ok_or_else(|| invalid_value("resource is not an object"))?;
    for operation in operations {
        apply_one(root, operation)?;
    }
    Ok(())
}

fn apply_one(root: &mut Map<String, Value>, operation: &Operation) -> Result<(), Refusal> {
    let op = operation.op;
    let Some((raw, path)) = &operation.path else {
        // No path: the value is an object of attributes, each added or replaced.
        let Some(Value::Object(attrs)) = &operation.value else {
            return Err(invalid_value(
                "an operation without a path needs an object value",
            ));
        };
        for (key, value) in attrs {
            if ["id", "meta", "schemas"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(key))
            {
                continue;
            }
            set(root, key, value.clone(), op);
        }
        return Ok(());
    };
    // The whole extension object by its URN (`urn:…:enterprise:2.0:User`).
    let whole_extension = is_extension_urn(raw)
        && (root.keys().any(|k| k.eq_ignore_ascii_case(raw))
            || raw.eq_ignore_ascii_case(crate::scim::schemas::ENTERPRISE_USER));
    if whole_extension {
        match (op, &operation.value) {
            (Op::Remove, _) => {
                let key = stored_key(root, raw);
                root.remove(&key);
            }
            (_, Some(value @ Value::Object(_))) => set(root, raw, value.clone(), op),
            _ => return Err(invalid_value(format!("`{raw}` needs an object value"))),
        }
        return Ok(());
    }
    match path {
        PatchPath::Attr(attr) => apply_attr(root, raw, attr, operation),
        PatchPath::Value(vp) => apply_filtered(
            root,
            raw,
            &vp.attr,
            &vp.filter,
            vp.sub_attr.as_deref(),
            operation,
        ),
    }
}

fn apply_attr(
    root: &mut Map<String, Value>,
    raw: &str,
    attr: &AttrPath,
    operation: &Operation,
) -> Result<(), Refusal> {
    if read_only(attr) {
        return Err(Refusal::new(
            400,
            Some("mutability"),
            format!("`{raw}` is read-only"),
        ));
    }
    let op = operation.op;
    let Some(container) = container(root, attr, op != Op::Remove)? else {
        return Ok(());
    };
    let key = stored_key(container, &attr.name);
    match (op, &attr.sub_attr) {
        (Op::Remove, None) => {
            match (container.get_mut(&key), &operation.value) {
                // `{"op":"remove","path":"members","value":[{"value":"id"}]}` removes those
                // members only, as Entra sends it.
                (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                    items.retain(|i| !gone.iter().any(|g| same_element(i, g)));
                }
                _ => {
                    container.remove(&key);
                }
            }
        }
        (Op::Remove, Some(sub)) => match container.get_mut(&key) {
            Some(Value::Object(parent)) => {
                let sk = stored_key(parent, sub);
                parent.remove(&sk);
            }
            Some(Value::Array(items)) => {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    let sk = stored_key(item, sub);
                    item.remove(&sk);
                }
            }
            _ => {}
        },
        (_, None) => {
            let value = operation.value.clone().unwrap_or(Value::Null);
            set(container, &attr.name, value, op);
        }
        (_, Some(sub)) => {
            let parent = container
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(parent) = parent else {
                return Err(invalid_path(format!(
                    "`{raw}`: `{}` is not a single complex attribute; use a value filter",
                    attr.name
                )));
            };
            let value = operation.value.clone().unwrap_or(Value::Null);
            set(parent, sub, value, op);
        }
    }
    Ok(())
}

/// The element an `add` creates when its value filter matches nothing: `emails[type eq
/// "work"].value` on a user without a work email gets one (as Entra's clients expect). Only a
/// single `eq` says what the new element is.
fn new_element(filter: &ValFilter) -> Option<Map<String, Value>> {
    let ValFilter::Attr(AttrExp::Comparison(path, CompareOp::Eq, wanted)) = filter else {
        return None;
    };
    let value = match wanted {
        CompValue::Str(s) => Value::String(s.clone()),
        CompValue::True => Value::Bool(true),
        CompValue::False => Value::Bool(false),
        CompValue::Number(n) => Value::Number(n.clone()),
        CompValue::Null => return None,
    };
    let mut element = Map::new();
    element.insert(path.name.clone(), value);
    Some(element)
}

fn apply_filtered(
    root: &mut Map<String, Value>,
    raw: &str,
    attr: &AttrPath,
    filter: &ValFilter,
    sub: Option<&str>,
    operation: &Operation,
) -> Result<(), Refusal> {
    let op = operation.op;
    let Some(container) = container(root, attr, op != Op::Remove)? else {
        return Ok(());
    };
    let key = stored_key(container, &attr.name);
    if op == Op::Remove {
        let Some(Value::Array(items)) = container.get_mut(&key) else {
            return Ok(());
        };
        match sub {
            None => items.retain(|i| !element_matches(filter, i)),
            Some(sub) => {
                for item in items.iter_mut().filter(|i| element_matches(filter, i)) {
                    if let Some(object) = item.as_object_mut() {
                        let sk = stored_key(object, sub);
                        object.remove(&sk);
                    }
                }
            }
        }
        // RFC 7644 §3.5.2.2: with no values left the attribute is unassigned.
        if items.is_empty() {
            container.remove(&key);
        }
        return Ok(());
    }
    let value = operation.value.clone().unwrap_or(Value::Null);
    let slot = container
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = slot else {
        return Err(invalid_path(format!(
            "`{raw}`: not a multi-valued attribute"
        )));
    };
    let mut hit = false;
    for item in items.iter_mut().filter(|i| element_matches(filter, i)) {
        hit = true;
        match (sub, item) {
            (Some(sub), Value::Object(object)) => set(object, sub, value.clone(), Op::Replace),
            (None, Value::Object(object)) if op == Op::Add => {
                if let Value::Object(fields) = &value {
                    for (k, v) in fields {
                        set(object, k, v.clone(), Op::Replace);
                    }
                }
            }
            (_, item) => *item = value.clone(),
        }
    }
    if hit {
        return Ok(());
    }
    // RFC 7644 §3.5.2.3: a replace whose value filter matches nothing is a 400 noTarget.
    if op == Op::Replace {
        return Err(no_target(format!("no value matches `{raw}`")));
    }
    let mut element =
        new_element(filter).ok_or_else(|| no_target(format!("no value matches `{raw}`")))?;
    match (sub, value) {
        (Some(sub), v) => {
            element.insert(sub.to_owned(), v);
        }
        (None, Value::Object(fields)) => element.extend(fields),
        (None, _) => return Err(invalid_value(format!("`{raw}` needs an object value"))),
    }
    items.push(Value::Object(element));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP], "Operations": ops})
    }

    fn patched(resource: Value, ops: Value) -> Result<Value, Refusal> {
        let ops = parse(&body(ops))?;
        let mut resource = resource;
        apply(&mut resource, &ops)?;
        Ok(resource)
    }

    fn user() -> Value {
        json!({
            "userName": "ada",
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"type": "work", "value": "ada@example.com", "primary": true}],
            "roles": [{"value": "admin", "primary": true}, {"value": "billing"}]
        })
    }

    #[test]
    fn a_body_without_the_patch_op_schema_is_refused() {
        for body in [
            json!({"Operations": [{"op": "replace", "path": "title", "value": "x"}]}),
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                   "Operations": [{"op": "replace", "path": "title", "value": "x"}]}),
            json!({"schemas": [PATCH_OP], "Operations": []}),
            json!({"schemas": [PATCH_OP], "Operations": [{"op": "move", "path": "title"}]}),
        ] {
            let err = parse(&body).unwrap_err();
            assert_eq!(
                (err.status, err.scim_type),
                (400, Some("invalidSyntax")),
                "{body}"
            );
        }
        let err = parse(&body(json!([{"op": "remove"}]))).unwrap_err();
        assert_eq!(err.scim_type, Some("noTarget"));
        let err = parse(&body(json!([{"op": "add", "path": "title"}]))).unwrap_err();
        assert_eq!(err.scim_type, Some("invalidValue"));
        let err = parse(&body(
            json!([{"op": "add", "path": "emails[type eq", "value": 1}]),
        ))
        .unwrap_err();
        assert_eq!(err.scim_type, Some("invalidPath"));
    }

    #[test]
    fn a_replace_whose_filter_matches_nothing_is_no_target() {
        let err = patched(
            user(),
            json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "h@x"}]),
        )
        .unwrap_err();
        assert_eq!((err.status, err.scim_type), (400, Some("noTarget")));
        // `add` creates the element the single `eq` describes.
        let added = patched(
            user(),
            json!([{"op": "add", "path": "emails[type eq \"home\"].value", "value": "h@x"}]),
        )
        .unwrap();
        assert_eq!(added["emails"][1], json!({"type": "home", "value": "h@x"}));
    }

    #[test]
    fn operations_follow_rfc_7644() {
        let out = patched(
            user(),
            json!([
                {"op": "Replace", "path": "name.givenName", "value": "Augusta"},
                {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "a@x"},
                {"op": "add", "path": "roles", "value": [{"value": "billing"}, {"value": "ops"}]},
                {"op": "remove", "path": "roles[value eq \"admin\"]"},
                {"op": "add", "value": {"title": "Countess", "name": {"middleName": "Ada"}}},
                {"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "R&D"},
            ]),
        )
        .unwrap();
        assert_eq!(
            out["name"],
            json!({"givenName": "Augusta", "familyName": "Lovelace", "middleName": "Ada"})
        );
        assert_eq!(out["emails"][0]["value"], "a@x");
        assert_eq!(out["emails"][0]["primary"], true);
        assert_eq!(
            out["roles"],
            json!([{"value": "billing"}, {"value": "ops"}])
        );
        assert_eq!(out["title"], "Countess");
        assert_eq!(
            out["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            json!({"department": "R&D"})
        );
        // replace of a multi-valued attribute replaces the whole list.
        let out = patched(
            out,
            json!([{"op": "replace", "path": "roles", "value": [{"value": "x"}]},
                   {"op": "remove", "path": "title"},
                   {"op": "remove", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"}]),
        )
        .unwrap();
        assert_eq!(out["roles"], json!([{"value": "x"}]));
        assert!(out.get("title").is_none());
        assert!(
            out.get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
                .is_none()
        );
        let err = patched(out, json!([{"op": "replace", "path": "id", "value": "x"}])).unwrap_err();
        assert_eq!(err.scim_type, Some("mutability"));
    }

    #[test]
    fn members_are_added_once_and_removed_by_filter_or_value() {
        let group = json!({"displayName": "g", "members": [{"value": "a"}]});
        let out = patched(
            group,
            json!([{"op": "add", "path": "members", "value": [{"value": "a"}, {"value": "b"}, {"value": "c"}]},
                   {"op": "remove", "path": "members[value eq \"a\"]"},
                   {"op": "remove", "path": "members", "value": [{"value": "c"}]}]),
        )
        .unwrap();
        assert_eq!(out["members"], json!([{"value": "b"}]));
    }
}
