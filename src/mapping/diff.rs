//! Comparing a desired resource with another copy (last-applied snapshot or the target's),
//! the PATCH changes that close the gap, and the snapshot hash.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CompiledMappings;
use super::path::{ScimPath, parse_bool};

/// One mapped attribute whose value differs; `Null` stands for absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// The target path as compiled, e.g. `emails[type eq "work"].value`.
    pub path: String,
    /// roster's desired value.
    pub roster: Value,
    /// The other side's value (snapshot or target).
    pub target: Value,
}

/// One PATCH change: replace `path` with `value`, or remove it when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub value: Option<Value>,
}

/// The mapped attributes (plus `active` and the role target) where `actual` differs from
/// `desired`, in mapping order. Anything not mapped is ignored: targets add `id`, `meta`,
/// groups and attributes of their own, and those are not drift.
///
/// Values are compared the way SCIM compares them:
/// * absent, `null`, `""`, `[]` and `{}` are all "no value", so they equal each other;
/// * `userName` compares case-insensitively, every other string exactly;
/// * a boolean equals the strings `"true"`/`"false"` in any case, and a number equals its
///   decimal text, because some servers send everything as strings;
/// * filtered paths find their element by the filter, whatever the element order (see
///   [`ScimPath::lookup`] for servers that omit `type`); object key order never matters.
#[must_use]
pub fn diff(compiled: &CompiledMappings, desired: &Value, actual: &Value) -> Vec<Difference> {
    compiled
        .compared_paths()
        .iter()
        .filter_map(|path| {
            let roster = path.lookup(desired);
            let target = path.lookup(actual);
            if values_equal(path, roster, target) {
                return None;
            }
            Some(Difference {
                path: path.as_str().to_owned(),
                roster: present(roster).cloned().unwrap_or(Value::Null),
                target: present(target).cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// The changes that make the other side equal roster's: a replace for each difference where
/// roster has a value, a remove where roster has none. One change per path.
///
/// Filtered paths are kept as they are (`emails[type eq "work"].value`); before sending,
/// [`keep_foreign_elements`] turns them into a replace of the whole attribute that keeps the
/// elements roster does not render (RFC 7644 §3.5.2.3 answers a filtered `replace` that
/// matches no element with 400 `noTarget`).
#[must_use]
pub fn patch_changes(differences: &[Difference]) -> Vec<Change> {
    let mut changes: Vec<Change> = Vec::with_capacity(differences.len());
    for difference in differences {
        if changes.iter().any(|change| change.path == difference.path) {
            continue;
        }
        let value = (!is_absent(&difference.roster)).then(|| difference.roster.clone());
        changes.push(Change {
            path: difference.path.clone(),
            value,
        });
    }
    changes
}

/// `changes` as PATCH should send them without touching what roster does not own: each change
/// to an element of a multi-valued attribute (`roles[primary eq true].value`) becomes one
/// `replace` of the whole attribute, built from `current` (the target's copy as read): the
/// elements roster's paths select take roster's values, every other element (a role assigned
/// in the app, a home email) is kept as it is. A filtered `replace` is not sent because
/// targets answer it with `noTarget` when they lack the element, and some refuse value-filter
/// paths altogether. Other changes pass through unchanged.
#[must_use]
pub fn keep_foreign_elements(
    compiled: &CompiledMappings,
    changes: &[Change],
    desired: &Value,
    current: &Value,
) -> Vec<Change> {
    let paths = compiled.compared_paths();
    let base_of = |raw: &str| {
        paths
            .iter()
            .find(|p| p.as_str() == raw)
            .and_then(ScimPath::multi_valued_base)
    };
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    let mut done: Vec<String> = Vec::new();
    for change in changes {
        let Some(base) = base_of(&change.path) else {
            out.push(change.clone());
            continue;
        };
        if done.contains(&base) {
            continue;
        }
        let mine: Vec<&ScimPath> = paths
            .iter()
            .filter(|p| p.multi_valued_base().as_deref() == Some(base.as_str()))
            .collect();
        let mut elements = mine
            .first()
            .map(|p| p.elements(current))
            .unwrap_or_default();
        for path in mine {
            let value = present(path.lookup(desired)).cloned();
            path.set_in_elements(&mut elements, value, path.element(desired));
        }
        out.push(Change {
            path: base.clone(),
            value: (!elements.is_empty()).then_some(Value::Array(elements)),
        });
        done.push(base);
    }
    out
}

/// A stable hash of `value`'s canonical JSON (object keys sorted, no whitespace): 16 hex digits
/// of FNV-1a 64. For change detection only; it is not collision resistant against an attacker.
#[must_use]
pub fn snapshot_hash(value: &Value) -> String {
    let mut canonical = Vec::new();
    write_canonical(value, &mut canonical);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Appends `value`'s canonical JSON to `out`. Keys and scalars are written by serde_json's own
/// writer (escaped and quoted as JSON writes them), straight into the buffer.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(object) => {
            let mut members: Vec<(&String, &Value)> = object.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (index, (key, member)) in members.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json(key, out);
                out.push(b':');
                write_canonical(member, out);
            }
            out.push(b'}');
        }
        Value::Array(elements) => {
            out.push(b'[');
            for (index, element) in elements.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(element, out);
            }
            out.push(b']');
        }
        scalar => write_json(scalar, out),
    }
}

/// A string or a scalar as compact JSON. Writing into a `Vec` cannot fail, and these types
/// always serialise; were it ever to fail, the hash would only differ, never panic.
fn write_json(value: &(impl Serialize + ?Sized), out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(out, value);
}

fn is_absent(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Array(elements) => elements.is_empty(),
        Value::Object(members) => members.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|value| !is_absent(value))
}

fn values_equal(path: &ScimPath, roster: Option<&Value>, target: Option<&Value>) -> bool {
    match (present(roster), present(target)) {
        (None, None) => true,
        (Some(roster), Some(target)) => scalars_equal(path, roster, target),
        _ => false,
    }
}

fn scalars_equal(path: &ScimPath, roster: &Value, target: &Value) -> bool {
    match (roster, target) {
        (Value::String(a), Value::String(b)) if path.is_case_insensitive() => {
            a.to_lowercase() == b.to_lowercase()
        }
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(flag), Value::String(text)) | (Value::String(text), Value::Bool(flag)) => {
            parse_bool(text) == Some(*flag)
        }
        (Value::Number(number), Value::String(text))
        | (Value::String(text), Value::Number(number)) => number.to_string() == *text,
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}
