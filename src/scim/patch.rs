//! PATCH requests (RFC 7644 §3.5.2): builders, wire form, and a local applier.
//!
//! The applier serves two callers: the client's PUT fallback for targets without PATCH, and the
//! dev-target's PATCH endpoint.
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::filter::{self, Filter, get_ci};
use super::quirks::PatchOpCase;

pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOp {
    Add,
    Replace,
    Remove,
}

impl PatchOp {
    #[must_use]
    pub fn as_str(self, case: PatchOpCase) -> &'static str {
        match (self, case) {
            (Self::Add, PatchOpCase::Lower) => "add",
            (Self::Replace, PatchOpCase::Lower) => "replace",
            (Self::Remove, PatchOpCase::Lower) => "remove",
            (Self::Add, PatchOpCase::Pascal) => "Add",
            (Self::Replace, PatchOpCase::Pascal) => "Replace",
            (Self::Remove, PatchOpCase::Pascal) => "Remove",
        }
    }

    /// Reads an op in any case, as servers must (Entra sends `Replace`).
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "add" => Some(Self::Add),
            "replace" => Some(Self::Replace),
            "remove" => Some(Self::Remove),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchOperation {
    pub op: PatchOp,
    pub path: Option<String>,
    pub value: Option<Value>,
}

/// A list of operations plus an optional `If-Match` version. Build with the chained methods;
/// the op case is chosen when it is sent, from the target's quirks.
#[derive(Debug, Clone, PartialEq, Default)]
#[must_use]
pub struct PatchRequest {
    pub operations: Vec<PatchOperation>,
    /// `meta.version` the caller last saw; sent as `If-Match` when the target supports ETags.
    pub if_match: Option<String>,
}

impl PatchRequest {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, op: PatchOp, path: Option<&str>, value: Option<Value>) -> Self {
        self.operations.push(PatchOperation {
            op,
            path: path.map(str::to_owned),
            value,
        });
        self
    }

    pub fn add(self, path: &str, value: Value) -> Self {
        self.push(PatchOp::Add, Some(path), Some(value))
    }

    /// Path-less `add` with a value object.
    pub fn add_value(self, object: Value) -> Self {
        self.push(PatchOp::Add, None, Some(object))
    }

    pub fn replace(self, path: &str, value: Value) -> Self {
        self.push(PatchOp::Replace, Some(path), Some(value))
    }

    /// Path-less `replace` with a value object (`{"active": false, "title": "x"}`).
    pub fn replace_value(self, object: Value) -> Self {
        self.push(PatchOp::Replace, None, Some(object))
    }

    pub fn remove(self, path: &str) -> Self {
        self.push(PatchOp::Remove, Some(path), None)
    }

    /// `add` of `members` `[{"value": id}, …]`.
    pub fn add_members(self, ids: &[String]) -> Self {
        let members: Vec<Value> = ids.iter().map(|id| json!({ "value": id })).collect();
        self.add("members", Value::Array(members))
    }

    /// One `remove` with path `members[value eq "id"]` per id, the id escaped as a JSON string.
    pub fn remove_members(mut self, ids: &[String]) -> Self {
        for id in ids {
            self = self.remove(&format!("members[value eq {}]", filter::json_string(id)));
        }
        self
    }

    /// One `remove` of `members` with the value `[{"value": id}, …]`: no filter in the path,
    /// for targets that refuse value-filter paths.
    pub fn remove_member_values(self, ids: &[String]) -> Self {
        let members: Vec<Value> = ids.iter().map(|id| json!({ "value": id })).collect();
        self.push(
            PatchOp::Remove,
            Some("members"),
            Some(Value::Array(members)),
        )
    }

    /// Whether every operation changes `active` only (by path, or as the only key of a
    /// path-less value).
    #[must_use]
    pub fn only_active(&self) -> bool {
        !self.operations.is_empty()
            && self.operations.iter().all(|o| match (&o.path, &o.value) {
                (Some(path), _) => path.eq_ignore_ascii_case("active"),
                (None, Some(Value::Object(object))) => {
                    !object.is_empty() && object.keys().all(|k| k.eq_ignore_ascii_case("active"))
                }
                (None, _) => false,
            })
    }

    pub fn if_match(mut self, version: impl Into<String>) -> Self {
        self.if_match = Some(version.into());
        self
    }

    /// The request body, ops spelled as the target wants them.
    #[must_use]
    pub fn to_body(&self, case: PatchOpCase) -> Value {
        let ops: Vec<Value> = self
            .operations
            .iter()
            .map(|o| {
                let mut op = Map::new();
                op.insert("op".into(), Value::String(o.op.as_str(case).into()));
                if let Some(path) = &o.path {
                    op.insert("path".into(), Value::String(path.clone()));
                }
                if let Some(value) = &o.value {
                    op.insert("value".into(), value.clone());
                }
                Value::Object(op)
            })
            .collect();
        json!({ "schemas": [PATCH_OP_SCHEMA], "Operations": ops })
    }

    /// Parses a PATCH body as a server receives it (ops in any case).
    pub fn from_body(body: &Value) -> Result<Self, PatchError> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(rename = "Operations", alias = "operations")]
            operations: Vec<WireOp>,
        }
        #[derive(Deserialize)]
        struct WireOp {
            op: String,
            path: Option<String>,
            value: Option<Value>,
        }
        let wire: Wire = serde_json::from_value(body.clone())
            .map_err(|e| PatchError::invalid_syntax(format!("not a PatchOp body: {e}")))?;
        let operations = wire
            .operations
            .into_iter()
            .map(|o| {
                let op = PatchOp::parse(&o.op)
                    .ok_or_else(|| PatchError::invalid_syntax(format!("unknown op `{}`", o.op)))?;
                Ok(PatchOperation {
                    op,
                    path: o.path.filter(|p| !p.is_empty()),
                    value: o.value,
                })
            })
            .collect::<Result<_, PatchError>>()?;
        Ok(Self {
            operations,
            if_match: None,
        })
    }
}

/// Splits member ids into chunks of at most `max` (at least 1) for group PATCHes.
#[must_use]
pub fn chunk_members(ids: &[String], max: u32) -> Vec<Vec<String>> {
    let size = usize::try_from(max.max(1)).unwrap_or(usize::MAX);
    ids.chunks(size).map(<[String]>::to_vec).collect()
}

/// Why a PATCH could not be applied, with the RFC 7644 `scimType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scim_type}: {detail}")]
pub struct PatchError {
    pub scim_type: &'static str,
    pub detail: String,
}

impl PatchError {
    fn invalid_path(detail: impl Into<String>) -> Self {
        Self {
            scim_type: "invalidPath",
            detail: detail.into(),
        }
    }
    fn invalid_value(detail: impl Into<String>) -> Self {
        Self {
            scim_type: "invalidValue",
            detail: detail.into(),
        }
    }
    fn invalid_syntax(detail: impl Into<String>) -> Self {
        Self {
            scim_type: "invalidSyntax",
            detail: detail.into(),
        }
    }
    fn no_target(detail: impl Into<String>) -> Self {
        Self {
            scim_type: "noTarget",
            detail: detail.into(),
        }
    }
}

/// A parsed PATCH path: `attr[.sub]`, `attr[filter]` or `attr[filter].sub`, with an optional
/// schema URN in front.
struct PatchPath {
    /// The extension object (`urn:…:enterprise:2.0:User`) the path lives in, if any.
    schema: Option<String>,
    attr: String,
    sub: Option<String>,
    filter: Option<Filter>,
}

fn parse_path(raw: &str, resource: &Map<String, Value>) -> Result<PatchPath, PatchError> {
    let (head, filter_text, tail) = match raw.find('[') {
        Some(open) => {
            let close = raw
                .rfind(']')
                .filter(|c| *c > open)
                .ok_or_else(|| PatchError::invalid_path(format!("unbalanced `[` in `{raw}`")))?;
            (&raw[..open], Some(&raw[open + 1..close]), &raw[close + 1..])
        }
        None => (raw, None, ""),
    };
    filter::check_attr_path(head).map_err(PatchError::invalid_path)?;
    // Split off a schema URN: an extension lives in its own object, the core schema's URN is
    // only a qualifier.
    let (schema, local) = if filter::has_urn_prefix(head) {
        let idx = head.rfind(':').unwrap_or(0);
        let urn = &head[..idx];
        let is_extension = resource.keys().any(|k| k.eq_ignore_ascii_case(urn))
            || urn.to_ascii_lowercase().contains(":extension:");
        (is_extension.then(|| urn.to_string()), &head[idx + 1..])
    } else {
        (None, head)
    };
    let (attr, mut sub) = match local.split_once('.') {
        Some((a, s)) => (a.to_string(), Some(s.to_string())),
        None => (local.to_string(), None),
    };
    let filter = match filter_text {
        Some(text) => {
            if sub.is_some() {
                return Err(PatchError::invalid_path(format!(
                    "`{raw}`: sub-attribute before filter"
                )));
            }
            if let Some(rest) = tail.strip_prefix('.') {
                filter::check_attr_path(rest).map_err(PatchError::invalid_path)?;
                sub = Some(rest.to_string());
            } else if !tail.is_empty() {
                return Err(PatchError::invalid_path(format!(
                    "unexpected `{tail}` in `{raw}`"
                )));
            }
            Some(
                filter::parse(text)
                    .map_err(|e| PatchError::invalid_path(format!("`{raw}`: {e}")))?,
            )
        }
        None => None,
    };
    Ok(PatchPath {
        schema,
        attr,
        sub,
        filter,
    })
}

/// The key under which `key` is stored (ignoring case), or `key` itself when absent.
fn stored_key(object: &Map<String, Value>, key: &str) -> String {
    object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(key))
        .cloned()
        .unwrap_or_else(|| key.to_string())
}

fn get_mut_ci<'a>(object: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Value> {
    let stored = stored_key(object, key);
    object.get_mut(&stored)
}

/// Attributes a PATCH must never change.
fn is_read_only(attr: &str) -> bool {
    attr.eq_ignore_ascii_case("id") || attr.eq_ignore_ascii_case("meta")
}

/// Applies `request` to `resource` (a JSON object) in order, as RFC 7644 §3.5.2 describes.
/// On error the resource may be partly changed: callers apply to a copy.
pub fn apply(resource: &mut Value, request: &PatchRequest) -> Result<(), PatchError> {
    let root = resource
        .as_object_mut()
        .ok_or_else(|| PatchError::invalid_value("resource is not an object"))?;
    for op in &request.operations {
        apply_one(root, op)?;
    }
    Ok(())
}

fn apply_one(root: &mut Map<String, Value>, op: &PatchOperation) -> Result<(), PatchError> {
    let Some(raw_path) = op.path.as_deref() else {
        // Path-less add/replace: the value is an object of attributes to merge in.
        let Some(Value::Object(attrs)) = &op.value else {
            return Err(PatchError::invalid_value(
                "an operation without a path needs an object value",
            ));
        };
        if op.op == PatchOp::Remove {
            return Err(PatchError::no_target("remove needs a path"));
        }
        for (key, value) in attrs {
            if is_read_only(key) || key == "schemas" {
                continue;
            }
            if filter::has_urn_prefix(key) && value.is_object() {
                // An extension object: merge its attributes the same way.
                let stored = stored_key(root, key);
                let slot = root
                    .entry(stored)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Some(target), Value::Object(inner)) = (slot.as_object_mut(), value) {
                    for (k, v) in inner {
                        set_attr(target, k, v.clone(), op.op);
                    }
                }
                continue;
            }
            set_attr(root, key, value.clone(), op.op);
        }
        return Ok(());
    };
    let path = parse_path(raw_path, root)?;
    if path.schema.is_none() && is_read_only(&path.attr) {
        return Err(PatchError {
            scim_type: "mutability",
            detail: format!("`{}` is read-only", path.attr),
        });
    }
    let container = match &path.schema {
        Some(urn) => {
            let stored = stored_key(root, urn);
            let slot = root
                .entry(stored)
                .or_insert_with(|| Value::Object(Map::new()));
            slot.as_object_mut()
                .ok_or_else(|| PatchError::invalid_path(format!("`{urn}` is not an object")))?
        }
        None => root,
    };
    match (&path.filter, op.op) {
        (None, PatchOp::Remove) => remove_plain(container, &path, op.value.as_ref()),
        (None, _) => {
            let value = op
                .value
                .clone()
                .ok_or_else(|| PatchError::invalid_value(format!("`{raw_path}` needs a value")))?;
            match &path.sub {
                None => set_attr(container, &path.attr, value, op.op),
                Some(sub) => {
                    let stored = stored_key(container, &path.attr);
                    let parent = container
                        .entry(stored)
                        .or_insert_with(|| Value::Object(Map::new()));
                    let parent = parent.as_object_mut().ok_or_else(|| {
                        PatchError::invalid_path(format!("`{}` is not complex", path.attr))
                    })?;
                    set_attr(parent, sub, value, op.op);
                }
            }
            Ok(())
        }
        (Some(filter), PatchOp::Remove) => {
            let Some(Value::Array(items)) = get_mut_ci(container, &path.attr) else {
                return Ok(());
            };
            match &path.sub {
                None => items.retain(|item| !filter.matches(item)),
                Some(sub) => {
                    for item in items.iter_mut().filter(|i| filter.matches(i)) {
                        if let Some(obj) = item.as_object_mut() {
                            let stored = stored_key(obj, sub);
                            obj.remove(&stored);
                        }
                    }
                }
            }
            Ok(())
        }
        (Some(filter), _) => {
            let value = op
                .value
                .clone()
                .ok_or_else(|| PatchError::invalid_value(format!("`{raw_path}` needs a value")))?;
            let stored = stored_key(container, &path.attr);
            let slot = container
                .entry(stored)
                .or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            let Some(items) = slot.as_array_mut() else {
                return Ok(());
            };
            let mut hit = false;
            for item in items.iter_mut().filter(|i| filter.matches(i)) {
                hit = true;
                match (&path.sub, item.as_object_mut()) {
                    (Some(sub), Some(obj)) => {
                        let key = stored_key(obj, sub);
                        obj.insert(key, value.clone());
                    }
                    _ => *item = value.clone(),
                }
            }
            if !hit {
                // No element matches `emails[type eq "work"].value`: create it, so that a
                // mapping to a typed slot works on a user that lacks one (Entra behaves so).
                let mut element = Map::new();
                if let Filter::Compare {
                    attr,
                    op: filter::CompareOp::Eq,
                    value: wanted,
                } = filter
                {
                    element.insert(attr.clone(), wanted.clone());
                } else {
                    return Err(PatchError::no_target(format!(
                        "nothing matches `{raw_path}`"
                    )));
                }
                match (&path.sub, value) {
                    (Some(sub), v) => {
                        element.insert(sub.clone(), v);
                    }
                    (None, Value::Object(fields)) => element.extend(fields),
                    (None, _) => {
                        return Err(PatchError::invalid_value(format!(
                            "`{raw_path}` needs an object value"
                        )));
                    }
                }
                items.push(Value::Object(element));
            }
            Ok(())
        }
    }
}

fn remove_plain(
    container: &mut Map<String, Value>,
    path: &PatchPath,
    value: Option<&Value>,
) -> Result<(), PatchError> {
    match &path.sub {
        Some(sub) => {
            if let Some(Value::Object(parent)) = get_mut_ci(container, &path.attr) {
                let stored = stored_key(parent, sub);
                parent.remove(&stored);
            }
        }
        None => match (get_mut_ci(container, &path.attr), value) {
            // `{"op":"remove","path":"members","value":[{"value":"id"}]}`: remove just those.
            (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                items.retain(|item| !gone.iter().any(|g| same_member(item, g)));
            }
            _ => {
                let stored = stored_key(container, &path.attr);
                container.remove(&stored);
            }
        },
    }
    Ok(())
}

/// Multi-valued elements are the same when their `value` is (members, emails), else when equal.
fn same_member(a: &Value, b: &Value) -> bool {
    match (
        a.as_object().and_then(|o| get_ci(o, "value")),
        b.as_object().and_then(|o| get_ci(o, "value")),
    ) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn set_attr(object: &mut Map<String, Value>, key: &str, value: Value, op: PatchOp) {
    let stored = stored_key(object, key);
    let value = coerce_bool(key, value);
    match (object.get_mut(&stored), value, op) {
        // `add` to a multi-valued attribute appends, skipping elements already present.
        (Some(Value::Array(items)), Value::Array(new), PatchOp::Add) => {
            for element in new {
                if !items.iter().any(|i| same_member(i, &element)) {
                    items.push(element);
                }
            }
        }
        (Some(Value::Array(items)), element, PatchOp::Add) if !element.is_array() => {
            if !items.iter().any(|i| same_member(i, &element)) {
                items.push(element);
            }
        }
        // A complex value replaces the sub-attributes it names and keeps the others.
        (Some(Value::Object(existing)), Value::Object(fields), _) => {
            for (k, v) in fields {
                let sk = stored_key(existing, &k);
                existing.insert(sk, v);
            }
        }
        (_, value, _) => {
            object.insert(stored, value);
        }
    }
}

/// `"active": "False"` as Entra sends it becomes a boolean.
fn coerce_bool(key: &str, value: Value) -> Value {
    if key.eq_ignore_ascii_case("active")
        && let Value::String(s) = &value
    {
        match s.to_ascii_lowercase().as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_follow_the_quirks_case() {
        let req = PatchRequest::new()
            .replace_value(json!({"active": false}))
            .add("title", json!("Chair"))
            .remove("nickName");
        let lower = req.to_body(PatchOpCase::Lower);
        assert_eq!(lower["schemas"][0], PATCH_OP_SCHEMA);
        let ops: Vec<&str> = lower["Operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["op"].as_str().unwrap())
            .collect();
        assert_eq!(ops, ["replace", "add", "remove"]);
        assert!(lower["Operations"][0].get("path").is_none(), "path-less");
        assert!(lower["Operations"][2].get("value").is_none());
        let pascal = req.to_body(PatchOpCase::Pascal);
        assert_eq!(pascal["Operations"][0]["op"], "Replace");
        assert_eq!(pascal["Operations"][2]["op"], "Remove");
        // A body round-trips through the server-side parser whatever the case.
        assert_eq!(
            PatchRequest::from_body(&pascal).unwrap().operations,
            req.operations
        );
    }

    #[test]
    fn member_removal_paths_escape_ids() {
        let req = PatchRequest::new().remove_members(&[r#"a"b"#.to_string(), "c".into()]);
        assert_eq!(
            req.operations[0].path.as_deref(),
            Some(r#"members[value eq "a\"b"]"#)
        );
        assert_eq!(req.operations.len(), 2);
        let add = PatchRequest::new().add_members(&["u1".into(), "u2".into()]);
        assert_eq!(
            add.operations[0].value,
            Some(json!([{"value": "u1"}, {"value": "u2"}]))
        );
    }

    #[test]
    fn chunking_splits_at_the_limit() {
        let ids: Vec<String> = (0..250).map(|i| i.to_string()).collect();
        let chunks = chunk_members(&ids, 100);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(chunks.concat(), ids);
        assert_eq!(chunk_members(&ids[..3], 0).len(), 3, "0 treated as 1");
        assert!(chunk_members(&[], 10).is_empty());
    }

    #[test]
    fn applier_handles_rfc_operations() {
        let mut group = json!({"id": "g", "displayName": "G", "members": [{"value": "a"}]});
        let req = PatchRequest::new()
            .add_members(&["b".into(), "a".into()])
            .remove_members(&["a".into()]);
        apply(&mut group, &req).unwrap();
        assert_eq!(group["members"], json!([{"value": "b"}]));

        let mut user = json!({"id": "u", "userName": "ada", "active": true,
                              "name": {"givenName": "Ada", "familyName": "L"},
                              "emails": [{"type": "work", "value": "a@x"}]});
        let req = PatchRequest::new()
            .replace_value(json!({"active": false, "name": {"givenName": "Augusta"}, "id": "evil"}))
            .replace(r#"emails[type eq "work"].value"#, json!("b@x"))
            .add(r#"emails[type eq "home"].value"#, json!("h@x"))
            .replace(
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
                json!("Board"),
            )
            .remove("name.familyName");
        apply(&mut user, &req).unwrap();
        assert_eq!(user["active"], false);
        assert_eq!(user["id"], "u", "id is read-only");
        assert_eq!(user["name"], json!({"givenName": "Augusta"}));
        assert_eq!(
            user["emails"],
            json!([{"type": "work", "value": "b@x"}, {"type": "home", "value": "h@x"}])
        );
        assert_eq!(
            user["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
            "Board"
        );

        let mut user2 = json!({"active": true});
        let entra = PatchRequest::from_body(&json!({"Operations": [
            {"op": "Replace", "path": "active", "value": "False"}]}))
        .unwrap();
        apply(&mut user2, &entra).unwrap();
        assert_eq!(user2["active"], false, "string booleans coerced");
    }

    #[test]
    fn applier_refuses_bad_paths_and_values() {
        let mut user = json!({"id": "u"});
        let bad = |r: PatchRequest| {
            let mut copy = user.clone();
            apply(&mut copy, &r).unwrap_err().scim_type
        };
        assert_eq!(
            bad(PatchRequest::new().replace("a b", json!(1))),
            "invalidPath"
        );
        assert_eq!(
            bad(PatchRequest::new().replace("members[value eq", json!(1))),
            "invalidPath"
        );
        assert_eq!(
            bad(PatchRequest::new().replace("id", json!("x"))),
            "mutability"
        );
        let no_value = PatchRequest {
            operations: vec![PatchOperation {
                op: PatchOp::Replace,
                path: None,
                value: Some(json!(3)),
            }],
            if_match: None,
        };
        assert_eq!(bad(no_value), "invalidValue");
        assert!(PatchRequest::from_body(&json!({"Operations": [{"op": "frob"}]})).is_err());
        assert!(apply(&mut user, &PatchRequest::new().remove("nothing")).is_ok());
    }
}
