//! The pure part of an HR snapshot: how a row is stored, what it means against the person
//! roster holds (joiner, mover, leaver, unchanged), and the leaver guard. No IO.
use serde_json::{Map, Value, json};

use crate::service::ingest::{EmployeeRecord, FieldUpdate};
use crate::store::entity::identity;

/// One person of a snapshot file.
#[derive(Debug, Clone)]
pub struct SnapshotRecord {
    /// Line (CSV, NDJSON) or element number (JSON array), from 1.
    pub line: u64,
    /// The fields the file carries: `Set` a value, `Clear` an empty one, `Keep` a field the
    /// file has no column for. `attributes` carries only the keys the file has.
    pub employee: EmployeeRecord,
    /// The row says `status` `terminated`: a leaver even though present.
    pub terminated: bool,
}

/// A row that cannot be taken, with its line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowError {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub employee_id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Joiner,
    Mover,
    Leaver,
}

impl ChangeKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Joiner => "joiner",
            ChangeKind::Mover => "mover",
            ChangeKind::Leaver => "leaver",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "joiner" => Some(ChangeKind::Joiner),
            "mover" => Some(ChangeKind::Mover),
            "leaver" => Some(ChangeKind::Leaver),
            _ => None,
        }
    }
}

const TEXT_FIELDS: [&str; 8] = [
    "user_name",
    "email",
    "given_name",
    "family_name",
    "display_name",
    "department",
    "title",
    "manager_employee_id",
];

fn text_fields(e: &EmployeeRecord) -> [&FieldUpdate<String>; 8] {
    [
        &e.user_name,
        &e.email,
        &e.given_name,
        &e.family_name,
        &e.display_name,
        &e.department,
        &e.title,
        &e.manager_employee_id,
    ]
}

fn stored_texts(p: &identity::Model) -> [&Option<String>; 8] {
    [
        &p.user_name,
        &p.email,
        &p.given_name,
        &p.family_name,
        &p.display_name,
        &p.department,
        &p.title,
        &p.manager_employee_id,
    ]
}

/// The row as stored in `hr_snapshot_row.record`: the carried fields (`null` for an empty
/// one), `attributes` with the carried keys, `status` only when terminated.
#[must_use]
pub fn record_to_json(record: &SnapshotRecord) -> Value {
    let mut map = Map::new();
    map.insert("employee_id".into(), json!(record.employee.employee_id));
    for (name, value) in TEXT_FIELDS.iter().zip(text_fields(&record.employee)) {
        match value {
            FieldUpdate::Keep => {}
            FieldUpdate::Clear => {
                map.insert((*name).into(), Value::Null);
            }
            FieldUpdate::Set(v) => {
                map.insert((*name).into(), json!(v));
            }
        }
    }
    match &record.employee.attributes {
        FieldUpdate::Keep => {}
        FieldUpdate::Clear => {
            map.insert("attributes".into(), Value::Null);
        }
        FieldUpdate::Set(v) => {
            map.insert("attributes".into(), v.clone());
        }
    }
    if record.terminated {
        map.insert("status".into(), json!("terminated"));
    }
    Value::Object(map)
}

/// The stored row back; `None` if it is not of the shape [`record_to_json`] writes.
#[must_use]
pub fn record_from_json(line: u64, value: &Value) -> Option<SnapshotRecord> {
    let map = value.as_object()?;
    let text = |name: &str| match map.get(name) {
        None => Some(FieldUpdate::Keep),
        Some(Value::Null) => Some(FieldUpdate::Clear),
        Some(Value::String(s)) => Some(FieldUpdate::Set(s.clone())),
        Some(_) => None,
    };
    let employee = EmployeeRecord {
        employee_id: map.get("employee_id")?.as_str()?.to_owned(),
        user_name: text("user_name")?,
        email: text("email")?,
        given_name: text("given_name")?,
        family_name: text("family_name")?,
        display_name: text("display_name")?,
        department: text("department")?,
        title: text("title")?,
        manager_employee_id: text("manager_employee_id")?,
        attributes: match map.get("attributes") {
            None => FieldUpdate::Keep,
            Some(Value::Null) => FieldUpdate::Clear,
            Some(v) => FieldUpdate::Set(v.clone()),
        },
    };
    Some(SnapshotRecord {
        line,
        employee,
        terminated: map.get("status").and_then(Value::as_str) == Some("terminated"),
    })
}

/// The person's attributes with the keys the row carries replaced (a `null` or empty value
/// removes the key); keys the row does not carry are kept.
#[must_use]
pub fn merged_attributes(current: &Value, carried: &Value) -> Value {
    let mut merged = current.as_object().cloned().unwrap_or_default();
    if let Some(carried) = carried.as_object() {
        for (key, value) in carried {
            if value.is_null() || value.as_str() == Some("") {
                merged.remove(key);
            } else {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(merged)
}

/// What the row means for the person roster holds (`None`: nobody with that employee id).
/// `None` as the answer: unchanged.
#[must_use]
pub fn classify(record: &SnapshotRecord, current: Option<&identity::Model>) -> Option<ChangeKind> {
    let active = current.is_some_and(|p| p.status == "active");
    if record.terminated {
        return active.then_some(ChangeKind::Leaver);
    }
    let Some(person) = current.filter(|_| active) else {
        return Some(ChangeKind::Joiner);
    };
    let texts_differ = text_fields(&record.employee)
        .into_iter()
        .zip(stored_texts(person))
        .any(|(carried, stored)| match carried {
            FieldUpdate::Keep => false,
            FieldUpdate::Clear => stored.is_some(),
            FieldUpdate::Set(v) => stored.as_deref() != Some(v.as_str()),
        });
    let attributes_differ = match &record.employee.attributes {
        FieldUpdate::Keep => false,
        FieldUpdate::Clear => person.attributes.as_object().is_some_and(|m| !m.is_empty()),
        FieldUpdate::Set(carried) => {
            merged_attributes(&person.attributes, carried) != person.attributes
        }
    };
    (texts_differ || attributes_differ).then_some(ChangeKind::Mover)
}

/// Whether a joiner row can be named: it carries `user_name` or `email`, or it re-hires a
/// person roster holds one of for a column the file does not have (an empty cell clears it).
#[must_use]
pub fn joiner_is_named(record: &SnapshotRecord, person: Option<&identity::Model>) -> bool {
    let e = &record.employee;
    let kept = |field: &FieldUpdate<String>, stored: Option<&String>| {
        matches!(field, FieldUpdate::Keep) && stored.is_some()
    };
    e.user_name.is_set()
        || e.email.is_set()
        || person.is_some_and(|p| {
            kept(&e.user_name, p.user_name.as_ref()) || kept(&e.email, p.email.as_ref())
        })
}

/// The guard's limits.
#[derive(Debug, Clone, Copy)]
pub struct LeaverGuard {
    pub max_leavers: u64,
    pub max_leaver_fraction: f64,
}

/// Below this many active people of a source the fraction limit does not apply: one leaver
/// among a handful of people is never held (the same floor as the reconcile deletion guard).
pub const MIN_PEOPLE_FOR_FRACTION: u64 = 10;

/// Why a snapshot with `leavers` leavers among `active` active people of its source is held,
/// or `None` when it may go ahead. Both limits are strict: exactly the limit proceeds.
#[must_use]
pub fn hold_reason(guard: LeaverGuard, leavers: u64, active: u64) -> Option<String> {
    if leavers > guard.max_leavers {
        return Some(format!(
            "{leavers} leavers, more than ROSTER_HR_SNAPSHOT_MAX_LEAVERS ({}); approve the snapshot if the export is complete",
            guard.max_leavers
        ));
    }
    if active >= MIN_PEOPLE_FOR_FRACTION {
        // People counts are far below 2^52: the conversions are exact.
        #[allow(clippy::cast_precision_loss)]
        let fraction = leavers as f64 / active as f64;
        if fraction > guard.max_leaver_fraction {
            return Some(format!(
                "{leavers} leavers of {active} active people ({:.1}%), more than ROSTER_HR_SNAPSHOT_MAX_LEAVER_FRACTION ({:.1}%); approve the snapshot if the export is complete",
                fraction * 100.0,
                guard.max_leaver_fraction * 100.0
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(status: &str) -> identity::Model {
        let now = chrono::Utc::now();
        identity::Model {
            id: "i".into(),
            employee_id: "E1".into(),
            user_name: Some("ada".into()),
            email: Some("ada@example.com".into()),
            given_name: None,
            family_name: None,
            display_name: None,
            department: Some("Sales".into()),
            title: None,
            manager_employee_id: None,
            attributes: json!({"cost_center": "42", "badge": "7"}),
            status: status.into(),
            last_event_at: None,
            field_times: None,
            version: 1,
            source: "hr".into(),
            created_at: now,
            updated_at: now,
        }
    }

    fn row(department: FieldUpdate<String>, attributes: FieldUpdate<Value>) -> SnapshotRecord {
        SnapshotRecord {
            line: 2,
            employee: EmployeeRecord {
                employee_id: "E1".into(),
                user_name: FieldUpdate::Set("ada".into()),
                department,
                attributes,
                ..Default::default()
            },
            terminated: false,
        }
    }

    #[test]
    fn only_carried_fields_count_and_attribute_keys_merge() {
        let p = person("active");
        let same = row(FieldUpdate::Set("Sales".into()), FieldUpdate::Keep);
        assert_eq!(classify(&same, Some(&p)), None);
        let moved = row(FieldUpdate::Set("Board".into()), FieldUpdate::Keep);
        assert_eq!(classify(&moved, Some(&p)), Some(ChangeKind::Mover));
        let cleared = row(FieldUpdate::Clear, FieldUpdate::Keep);
        assert_eq!(classify(&cleared, Some(&p)), Some(ChangeKind::Mover));
        // One carried attribute key, equal: the other keys are kept, so unchanged.
        let attrs = row(
            FieldUpdate::Keep,
            FieldUpdate::Set(json!({"cost_center": "42"})),
        );
        assert_eq!(classify(&attrs, Some(&p)), None);
        let attrs = row(
            FieldUpdate::Keep,
            FieldUpdate::Set(json!({"cost_center": "43"})),
        );
        assert_eq!(classify(&attrs, Some(&p)), Some(ChangeKind::Mover));
        assert_eq!(
            merged_attributes(&p.attributes, &json!({"cost_center": "", "x": "1"})),
            json!({"badge": "7", "x": "1"})
        );
    }

    #[test]
    fn joiners_rehires_and_terminated_rows() {
        let same = row(FieldUpdate::Set("Sales".into()), FieldUpdate::Keep);
        assert_eq!(classify(&same, None), Some(ChangeKind::Joiner));
        assert_eq!(
            classify(&same, Some(&person("terminated"))),
            Some(ChangeKind::Joiner)
        );
        let mut gone = same.clone();
        gone.terminated = true;
        assert_eq!(
            classify(&gone, Some(&person("active"))),
            Some(ChangeKind::Leaver)
        );
        assert_eq!(classify(&gone, Some(&person("terminated"))), None);
        assert_eq!(classify(&gone, None), None);
    }

    #[test]
    fn stored_rows_read_back_the_same() {
        let mut r = row(FieldUpdate::Clear, FieldUpdate::Set(json!({"a": "1"})));
        r.terminated = true;
        let back = record_from_json(9, &record_to_json(&r)).unwrap();
        assert_eq!(back.employee.department, FieldUpdate::Clear);
        assert_eq!(back.employee.user_name, FieldUpdate::Set("ada".into()));
        assert_eq!(back.employee.email, FieldUpdate::Keep);
        assert_eq!(
            back.employee.attributes,
            FieldUpdate::Set(json!({"a": "1"}))
        );
        assert!(back.terminated);
        assert_eq!(back.line, 9);
    }

    #[test]
    fn the_guard_holds_above_either_limit_only() {
        let g = LeaverGuard {
            max_leavers: 50,
            max_leaver_fraction: 0.05,
        };
        assert_eq!(hold_reason(g, 50, 10_000), None);
        assert!(hold_reason(g, 51, 10_000).unwrap().contains("MAX_LEAVERS"));
        assert_eq!(hold_reason(g, 5, 100), None);
        assert!(hold_reason(g, 6, 100).unwrap().contains("FRACTION"));
        // A handful of people: one leaver is never held by the fraction.
        assert_eq!(hold_reason(g, 1, 5), None);
    }
}
