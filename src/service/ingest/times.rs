//! What ordering and idempotency need to remember: when each field of a person was last set,
//! and the canonical hash of an event's payload.
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::store::entity::identity;

/// The name the status goes by among the field times.
pub(crate) const STATUS: &str = "status";

/// The fields of an employee record, as named in events and in `identity.field_times`.
pub(crate) const FIELDS: [&str; 9] = [
    "user_name",
    "email",
    "given_name",
    "family_name",
    "display_name",
    "department",
    "title",
    "manager_employee_id",
    "attributes",
];

/// When each field (and the status) of a person was last set: the `occurred_at` of the event
/// that set it. A field without a time was never set by an event, so any event may set it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldTimes(BTreeMap<String, DateTime<Utc>>);

impl FieldTimes {
    /// The person's times as stored. A person written before times were kept counts every
    /// field and the status as set at `last_event_at`: the rule they were written under.
    pub(crate) fn of(person: &identity::Model) -> Self {
        if let Some(Value::Object(stored)) = &person.field_times {
            return Self(
                stored
                    .iter()
                    .filter_map(|(field, at)| {
                        let at = DateTime::parse_from_rfc3339(at.as_str()?).ok()?;
                        Some((field.clone(), at.with_timezone(&Utc)))
                    })
                    .collect(),
            );
        }
        let Some(at) = person.last_event_at else {
            return Self::default();
        };
        Self(
            FIELDS
                .iter()
                .chain([&STATUS])
                .map(|field| ((*field).to_owned(), at))
                .collect(),
        )
    }

    pub(crate) fn get(&self, field: &str) -> Option<DateTime<Utc>> {
        self.0.get(field).copied()
    }

    /// Whether an event at `at` may set `field`: nothing newer set it. Between data fields a
    /// tie goes to the event that arrives last, as it always did.
    pub(crate) fn admits(&self, field: &str, at: DateTime<Utc>) -> bool {
        self.get(field).is_none_or(|set| at >= set)
    }

    pub(crate) fn set(&mut self, field: &str, at: DateTime<Utc>) {
        self.0.insert(field.to_owned(), at);
    }

    /// Records that an event at `at` agreed with the field's value: it keeps the later time.
    pub(crate) fn confirm(&mut self, field: &str, at: DateTime<Utc>) {
        if self.admits(field, at) {
            self.set(field, at);
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(field, at)| {
                    let at = at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                    (field.clone(), Value::String(at))
                })
                .collect::<Map<String, Value>>(),
        )
    }
}

/// SHA-256 (hex) of a payload in canonical form: object keys sorted at every level, no
/// whitespace. The payload is the event as parsed and written back, so two spellings of one
/// event (key order, `+01:00` for `Z`) hash alike.
pub(crate) fn payload_hash(payload: &Value) -> String {
    let mut hasher = Sha256::new();
    feed(&mut hasher, payload);
    hex::encode(hasher.finalize())
}

fn feed(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Object(fields) => {
            let mut sorted: Vec<(&String, &Value)> = fields.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            for (i, (key, value)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                write_json(hasher, key);
                hasher.update(b":");
                feed(hasher, value);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                feed(hasher, item);
            }
            hasher.update(b"]");
        }
        scalar => write_json(hasher, scalar),
    }
}

/// `value`'s compact JSON, the bytes `to_string` makes, written into the hash as they are
/// made rather than into a string of their own first.
fn write_json(hasher: &mut Sha256, value: &(impl serde::Serialize + ?Sized)) {
    struct Into<'a>(&'a mut Sha256);
    impl std::io::Write for Into<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Serializing a JSON value or a string cannot fail, and writing into a hash never does.
    let _ = serde_json::to_writer(Into(hasher), value);
}

/// The paths where two payloads differ (`type`, `employee.title`), for a conflict's detail.
pub(crate) fn differences(before: &Value, after: &Value) -> Vec<String> {
    let mut found = Vec::new();
    diff_into(before, after, "", &mut found);
    found
}

fn diff_into(before: &Value, after: &Value, at: &str, found: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_into(x, y, &path, found),
                    _ => found.push(path),
                }
            }
        }
        (a, b) if a != b => found.push(if at.is_empty() {
            "payload".into()
        } else {
            at.into()
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn person(field_times: Option<Value>, last_event_at: Option<DateTime<Utc>>) -> identity::Model {
        let now = Utc::now();
        identity::Model {
            id: "id".into(),
            employee_id: "E".into(),
            user_name: None,
            email: None,
            given_name: None,
            family_name: None,
            display_name: None,
            department: None,
            title: None,
            manager_employee_id: None,
            attributes: json!({}),
            status: "active".into(),
            last_event_at,
            field_times,
            version: 1,
            source: "hr".into(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_person_stored_before_field_times_counts_every_field_as_set_at_its_last_event() {
        let at = DateTime::parse_from_rfc3339("2026-11-01T09:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let earlier = at - chrono::Duration::hours(1);
        let legacy = FieldTimes::of(&person(None, Some(at)));
        for field in FIELDS.iter().chain([&STATUS]) {
            assert_eq!(legacy.get(field), Some(at), "{field}");
            assert!(!legacy.admits(field, earlier), "{field}");
            assert!(
                legacy.admits(field, at),
                "{field}: a tie between data fields is taken"
            );
        }
        // Times round-trip through their stored form; a field without one admits anything.
        let mut times = FieldTimes::default();
        times.set("title", at);
        times.confirm(STATUS, earlier);
        times.confirm(STATUS, at);
        let stored = FieldTimes::of(&person(Some(times.to_json()), Some(at)));
        assert_eq!(stored, times);
        assert_eq!(stored.get(STATUS), Some(at), "confirm keeps the later time");
        assert!(stored.admits("department", earlier));
        assert_eq!(FieldTimes::of(&person(None, None)), FieldTimes::default());
    }

    #[test]
    fn the_hash_ignores_key_order_and_sees_every_value() {
        let a = json!({"event_id": "e", "employee": {"employee_id": "E", "title": "x"}});
        let b = json!({"employee": {"title": "x", "employee_id": "E"}, "event_id": "e"});
        assert_eq!(payload_hash(&a), payload_hash(&b));
        let c = json!({"event_id": "e", "employee": {"employee_id": "E", "title": "y"}});
        assert_ne!(payload_hash(&a), payload_hash(&c));
        assert_eq!(differences(&a, &c), ["employee.title"]);
        // Structure is part of the hash: `["a,b"]` is not `["a","b"]`.
        assert_ne!(
            payload_hash(&json!(["a,b"])),
            payload_hash(&json!(["a", "b"]))
        );
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_canonical_text_and_never_changes() {
        // Hashes are stored with each event and compared with those of events received
        // later: the canonical text, `{"a":{"c":-3,"z":"é"},"b":[1,true,null,"x\"y"]}` here,
        // and so the hash, must stay what it was when they were stored.
        let payload = json!({"b": [1, true, null, "x\"y"], "a": {"z": "é", "c": -3}});
        assert_eq!(
            payload_hash(&payload),
            "132735de3e74a86b472f7b7c5350039f261826a06be846a656375f9acd538d6d"
        );
    }
}
