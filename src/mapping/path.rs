//! SCIM attribute paths that mappings write to (RFC 7644 §3.5.2 `PATH`, restricted).
//!
//! ```text
//! path   := [ schema-urn ":" ] attr [ "[" filter "]" ] [ "." sub-attr ]
//! filter := attr "eq" ( json-string | "true" | "false" )
//! ```
//!
//! Examples: `userName`, `name.givenName`, `emails[type eq "work"].value`,
//! `roles[primary eq true].value`,
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.
//! A path qualified with the core User schema URN is the same as the unqualified path.
//!
//! Besides the syntax, a path must make sense for a User: `id`, `meta`, `schemas` and `groups`
//! are owned by the service provider; known multi-valued attributes (`emails`, `roles`, ...) need
//! a filter and a sub-attribute, because a mapping yields one value, not a list; known singular
//! attributes take no filter; `name` and the enterprise `manager` need a sub-attribute.
use std::fmt;

use serde_json::{Map, Value};

/// The core User schema; paths qualified with it are stored unqualified.
pub const CORE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The enterprise User extension (RFC 7643 §4.3).
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

const MAX_PATH_LEN: usize = 512;

const NOT_MAPPABLE: [&str; 4] = ["id", "meta", "schemas", "groups"];
const CORE_MULTI_VALUED: [&str; 8] = [
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "roles",
    "entitlements",
    "x509Certificates",
];
const CORE_SIMPLE: [&str; 12] = [
    "userName",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "active",
    "password",
    "externalId",
];
const ENTERPRISE_SIMPLE: [&str; 5] = [
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
];

/// The value of a `[attr eq value]` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterValue {
    String(String),
    Bool(bool),
}

impl FilterValue {
    fn to_json(&self) -> Value {
        match self {
            Self::String(text) => Value::String(text.clone()),
            Self::Bool(flag) => Value::Bool(*flag),
        }
    }

    /// Whether a resource's value satisfies `eq` the way SCIM compares: strings
    /// case-insensitively (canonical `type` values are not case-exact), booleans also when a
    /// sloppy server sends them as the strings `"true"`/`"false"`.
    fn matches(&self, actual: &Value) -> bool {
        match (self, actual) {
            (Self::String(want), Value::String(have)) => want.to_lowercase() == have.to_lowercase(),
            (Self::Bool(want), Value::Bool(have)) => want == have,
            (Self::Bool(want), Value::String(have)) => parse_bool(have) == Some(*want),
            _ => false,
        }
    }
}

/// `[attribute eq value]` selecting one element of a multi-valued attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueFilter {
    attribute: String,
    value: FilterValue,
}

impl ValueFilter {
    #[must_use]
    pub fn attribute(&self) -> &str {
        &self.attribute
    }

    #[must_use]
    pub fn value(&self) -> &FilterValue {
        &self.value
    }
}

/// A validated target path. Invariant: `text` is the canonical spelling of the other fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimPath {
    text: String,
    /// Extension schema URN; `None` for the core User schema.
    schema: Option<String>,
    attribute: String,
    filter: Option<ValueFilter>,
    sub_attribute: Option<String>,
}

impl fmt::Display for ScimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl ScimPath {
    /// Parses and checks a target path; the error is a message without location.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("path is empty".to_owned());
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(format!("path is longer than {MAX_PATH_LEN} bytes"));
        }
        let (schema, rest) = split_schema(raw)?;
        let mut cursor = Cursor { text: rest, at: 0 };
        let attribute = cursor.attribute_name()?;
        let filter = if cursor.eat(b'[') {
            let filter = cursor.filter()?;
            if !cursor.eat(b']') {
                return Err(cursor.error("expected `]` after the filter"));
            }
            Some(filter)
        } else {
            None
        };
        let sub_attribute = if cursor.eat(b'.') {
            Some(cursor.attribute_name()?)
        } else {
            None
        };
        if !cursor.at_end() {
            return Err(cursor.error("unexpected characters"));
        }
        let path = Self {
            text: canonical_text(
                schema.as_deref(),
                &attribute,
                filter.as_ref(),
                sub_attribute.as_deref(),
            ),
            schema,
            attribute,
            filter,
            sub_attribute,
        };
        path.check_shape()?;
        Ok(path)
    }

    /// The canonical text, e.g. `emails[type eq "work"].value`; what PATCH operations carry.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The extension schema URN, `None` for core attributes.
    #[must_use]
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    #[must_use]
    pub fn attribute(&self) -> &str {
        &self.attribute
    }

    #[must_use]
    pub fn filter(&self) -> Option<&ValueFilter> {
        self.filter.as_ref()
    }

    #[must_use]
    pub fn sub_attribute(&self) -> Option<&str> {
        self.sub_attribute.as_deref()
    }

    /// Whether SCIM defines this value as boolean (`active`, any `primary`), so text like
    /// `"true"` from an expression is rendered as a JSON boolean.
    #[must_use]
    pub fn is_boolean(&self) -> bool {
        let core_active = self.schema.is_none()
            && self.sub_attribute.is_none()
            && self.attribute.eq_ignore_ascii_case("active");
        core_active
            || self
                .sub_attribute
                .as_deref()
                .is_some_and(|sub| sub.eq_ignore_ascii_case("primary"))
    }

    /// Whether values compare case-insensitively: the core `userName` and `emails.value`
    /// (RFC 7643 §4.1 makes both `caseExact: false`; matching relies on the first, and targets
    /// that lower-case addresses on the second). Other strings compare exactly, so a hand
    /// edit that only changes case is still drift.
    #[must_use]
    pub fn is_case_insensitive(&self) -> bool {
        if self.schema.is_some() {
            return false;
        }
        let user_name = self.filter.is_none()
            && self.sub_attribute.is_none()
            && self.attribute.eq_ignore_ascii_case("userName");
        let email = self.attribute.eq_ignore_ascii_case("emails")
            && self
                .sub_attribute
                .as_deref()
                .is_some_and(|sub| sub.eq_ignore_ascii_case("value"));
        user_name || email
    }

    /// Why this path cannot be the matching attribute, if it cannot: a look-up is a plain
    /// `attribute eq "value"` filter, which a path selecting one element of a multi-valued
    /// attribute (`emails[type eq "work"].value`) is not.
    #[must_use]
    pub fn matching_refusal(&self) -> Option<String> {
        self.filter.is_some().then(|| {
            format!(
                "`{}` selects one element of a multi-valued attribute, which a look-up filter \
                 cannot name; match on a simple attribute such as userName or externalId \
                 (e.g. map the email to userName)",
                self.text
            )
        })
    }

    /// Whether two paths would write the same place (or one inside the other), which would make
    /// rendering depend on mapping order.
    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        let same_attribute = eq_schema(self.schema.as_deref(), other.schema.as_deref())
            && self.attribute.eq_ignore_ascii_case(&other.attribute);
        if !same_attribute {
            return false;
        }
        let whole = |path: &Self| path.filter.is_none() && path.sub_attribute.is_none();
        if whole(self) || whole(other) {
            return true;
        }
        let same_filter = match (&self.filter, &other.filter) {
            (None, None) => true,
            (Some(mine), Some(theirs)) => {
                mine.attribute.eq_ignore_ascii_case(&theirs.attribute)
                    && mine.value.matches(&theirs.value.to_json())
            }
            _ => return true,
        };
        let same_sub = match (&self.sub_attribute, &other.sub_attribute) {
            (Some(mine), Some(theirs)) => mine.eq_ignore_ascii_case(theirs),
            _ => true,
        };
        same_filter && same_sub
    }

    fn check_shape(&self) -> Result<(), String> {
        let name = self.attribute.as_str();
        let is = |list: &[&str]| list.iter().any(|known| known.eq_ignore_ascii_case(name));
        match self.schema.as_deref() {
            None => {
                if is(&NOT_MAPPABLE) {
                    return Err(format!(
                        "`{name}` is managed by the service provider and cannot be a mapping target"
                    ));
                }
                if is(&CORE_MULTI_VALUED) && (self.filter.is_none() || self.sub_attribute.is_none())
                {
                    return Err(format!(
                        "`{name}` is multi-valued: select one element and sub-attribute, e.g. {name}[type eq \"work\"].value"
                    ));
                }
                if is(&CORE_SIMPLE) && (self.filter.is_some() || self.sub_attribute.is_some()) {
                    return Err(format!(
                        "`{name}` is a simple attribute: no filter or sub-attribute"
                    ));
                }
                if name.eq_ignore_ascii_case("name")
                    && (self.filter.is_some() || self.sub_attribute.is_none())
                {
                    return Err(
                        "`name` is complex: map a sub-attribute such as name.givenName".to_owned(),
                    );
                }
            }
            Some(schema) if schema.eq_ignore_ascii_case(ENTERPRISE_USER_SCHEMA) => {
                if is(&ENTERPRISE_SIMPLE) && (self.filter.is_some() || self.sub_attribute.is_some())
                {
                    return Err(format!(
                        "`{name}` is a simple attribute: no filter or sub-attribute"
                    ));
                }
                if name.eq_ignore_ascii_case("manager")
                    && (self.filter.is_some() || self.sub_attribute.is_none())
                {
                    return Err("`manager` is complex: map manager.value".to_owned());
                }
            }
            Some(_) => {}
        }
        if let (Some(filter), Some(sub)) = (&self.filter, &self.sub_attribute)
            && filter.attribute.eq_ignore_ascii_case(sub)
        {
            return Err(format!(
                "the filter already fixes `{sub}`; map another sub-attribute"
            ));
        }
        if self.filter.is_some() && self.sub_attribute.is_none() {
            return Err(
                "a filtered path needs a sub-attribute, e.g. [type eq \"work\"].value".to_owned(),
            );
        }
        Ok(())
    }

    /// The value at this path in a SCIM resource, as a tolerant client reads it.
    ///
    /// Attribute names and schema URNs match case-insensitively (RFC 7643 §2.1). For a filtered
    /// path the element is the one whose filter attribute matches; when **no** element carries
    /// the filter attribute at all (a server that drops `type`), the element is the single one
    /// marked `primary: true`, else the only element. A multi-valued attribute sent as a bare
    /// object counts as a one-element list.
    #[must_use]
    pub fn lookup<'a>(&self, resource: &'a Value) -> Option<&'a Value> {
        let container = match &self.schema {
            Some(schema) => get_ci(resource, schema)?,
            None => resource,
        };
        let value = get_ci(container, &self.attribute)?;
        let holder = match &self.filter {
            Some(filter) => select_element(value, filter)?,
            None => value,
        };
        match &self.sub_attribute {
            Some(sub) => get_ci(holder, sub),
            None => Some(holder),
        }
    }

    /// Writes `value` at this path in a resource being rendered, creating the extension object,
    /// the complex attribute or the filtered element as needed.
    pub fn insert(&self, resource: &mut Map<String, Value>, value: Value) {
        let container = match &self.schema {
            Some(schema) => match object_entry(resource, schema) {
                Some(container) => container,
                None => return,
            },
            None => resource,
        };
        match (&self.filter, &self.sub_attribute) {
            (Some(filter), Some(sub)) => {
                let slot = container
                    .entry(self.attribute.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                let Value::Array(elements) = slot else { return };
                let wanted = filter.value.to_json();
                let index = elements
                    .iter()
                    .position(|element| element.get(&filter.attribute) == Some(&wanted))
                    .unwrap_or_else(|| {
                        let mut element = Map::new();
                        element.insert(filter.attribute.clone(), wanted.clone());
                        elements.push(Value::Object(element));
                        elements.len() - 1
                    });
                if let Some(Value::Object(element)) = elements.get_mut(index) {
                    element.insert(sub.clone(), value);
                }
            }
            (None, Some(sub)) => {
                if let Some(complex) = object_entry(container, &self.attribute) {
                    complex.insert(sub.clone(), value);
                }
            }
            (_, None) => {
                container.insert(self.attribute.clone(), value);
            }
        }
    }
}

/// `"true"`/`"false"` in any case, as some servers send booleans.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn eq_schema(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// Splits `urn:...:Schema:attr...` at the last `:` before any filter bracket.
fn split_schema(raw: &str) -> Result<(Option<String>, &str), String> {
    let is_urn = raw
        .get(..4)
        .is_some_and(|head| head.eq_ignore_ascii_case("urn:"));
    if !is_urn {
        return Ok((None, raw));
    }
    let head = raw.split('[').next().unwrap_or(raw);
    let Some(colon) = head.rfind(':') else {
        return Err("schema URN without an attribute".to_owned());
    };
    let (schema, rest) = (&raw[..colon], &raw[colon + 1..]);
    if schema.len() <= 4 || schema.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid schema URN `{schema}`"));
    }
    if schema.eq_ignore_ascii_case(CORE_USER_SCHEMA) {
        Ok((None, rest))
    } else {
        Ok((Some(schema.to_owned()), rest))
    }
}

fn canonical_text(
    schema: Option<&str>,
    attribute: &str,
    filter: Option<&ValueFilter>,
    sub: Option<&str>,
) -> String {
    let mut text = String::new();
    if let Some(schema) = schema {
        text.push_str(schema);
        text.push(':');
    }
    text.push_str(attribute);
    if let Some(filter) = filter {
        let value = match &filter.value {
            FilterValue::String(value) => Value::String(value.clone()).to_string(),
            FilterValue::Bool(flag) => flag.to_string(),
        };
        text.push_str(&format!("[{} eq {value}]", filter.attribute));
    }
    if let Some(sub) = sub {
        text.push('.');
        text.push_str(sub);
    }
    text
}

/// Byte cursor over the part after the schema.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn error(&self, message: &str) -> String {
        format!(
            "{message} at `{}`",
            self.text.get(self.at..).unwrap_or_default()
        )
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn at_end(&self) -> bool {
        self.at >= self.text.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// RFC 7643 `ATTRNAME = ALPHA *(nameChar)`, `nameChar = "-" / "_" / DIGIT / ALPHA`.
    fn attribute_name(&mut self) -> Result<String, String> {
        let start = self.at;
        if !self.peek().is_some_and(|byte| byte.is_ascii_alphabetic()) {
            return Err(self.error("expected an attribute name"));
        }
        while self
            .peek()
            .is_some_and(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        {
            self.at += 1;
        }
        Ok(self.text[start..self.at].to_owned())
    }

    fn filter(&mut self) -> Result<ValueFilter, String> {
        self.skip_spaces();
        let attribute = self.attribute_name()?;
        self.skip_spaces();
        let op_start = self.at;
        while self.peek().is_some_and(|byte| byte.is_ascii_alphabetic()) {
            self.at += 1;
        }
        if !self.text[op_start..self.at].eq_ignore_ascii_case("eq") {
            self.at = op_start;
            return Err(self.error("only `eq` filters are supported in target paths"));
        }
        self.skip_spaces();
        let value = if self.peek() == Some(b'"') {
            FilterValue::String(self.string()?)
        } else {
            let start = self.at;
            while self.peek().is_some_and(|byte| byte.is_ascii_alphabetic()) {
                self.at += 1;
            }
            match parse_bool(&self.text[start..self.at]) {
                Some(flag) => FilterValue::Bool(flag),
                None => {
                    self.at = start;
                    return Err(self.error("expected a string or true/false"));
                }
            }
        };
        self.skip_spaces();
        Ok(ValueFilter { attribute, value })
    }

    fn string(&mut self) -> Result<String, String> {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut end = start + 1;
        loop {
            match bytes.get(end) {
                None => return Err(self.error("unterminated string")),
                Some(b'\\') => end += 2,
                Some(b'"') => break,
                Some(_) => end += 1,
            }
        }
        let literal = self
            .text
            .get(start..=end)
            .ok_or_else(|| self.error("unterminated string"))?;
        let value = serde_json::from_str::<String>(literal)
            .map_err(|error| self.error(&format!("invalid string ({error})")))?;
        self.at = end + 1;
        Ok(value)
    }
}

/// Object member by name, exact first, else ASCII case-insensitive.
fn get_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, member)| member)
    })
}

fn select_element<'a>(value: &'a Value, filter: &ValueFilter) -> Option<&'a Value> {
    let elements = match value {
        Value::Array(elements) => elements.as_slice(),
        Value::Object(_) => std::slice::from_ref(value),
        _ => return None,
    };
    select_index(elements, filter).and_then(|index| elements.get(index))
}

/// Which of `elements` the filter selects, as [`ScimPath::lookup`] reads it.
fn select_index(elements: &[Value], filter: &ValueFilter) -> Option<usize> {
    if let Some(found) = elements.iter().position(|element| {
        get_ci(element, &filter.attribute).is_some_and(|actual| filter.value.matches(actual))
    }) {
        return Some(found);
    }
    // Elements that say what they are but none of them is ours: the element is missing.
    if elements
        .iter()
        .any(|element| get_ci(element, &filter.attribute).is_some())
    {
        return None;
    }
    let primary = FilterValue::Bool(true);
    let mut marked = elements.iter().enumerate().filter(|(_, element)| {
        get_ci(element, "primary").is_some_and(|flag| primary.matches(flag))
    });
    match (marked.next(), marked.next()) {
        (Some((only_primary, _)), None) => Some(only_primary),
        _ if elements.len() == 1 => Some(0),
        _ => None,
    }
}

impl ScimPath {
    /// For a path into one element of a multi-valued attribute, the path of the whole
    /// attribute as PATCH names it (`roles`, `urn:…:User:badges`); `None` for other paths.
    #[must_use]
    pub fn multi_valued_base(&self) -> Option<String> {
        self.filter.as_ref()?;
        Some(match &self.schema {
            Some(schema) => format!("{schema}:{}", self.attribute),
            None => self.attribute.clone(),
        })
    }

    /// The elements of this path's multi-valued attribute in `resource` (a bare object counts
    /// as one element); empty when it has none.
    #[must_use]
    pub fn elements(&self, resource: &Value) -> Vec<Value> {
        let container = match &self.schema {
            Some(schema) => get_ci(resource, schema),
            None => Some(resource),
        };
        match container.and_then(|c| get_ci(c, &self.attribute)) {
            Some(Value::Array(elements)) => elements.clone(),
            Some(element @ Value::Object(_)) => vec![element.clone()],
            _ => Vec::new(),
        }
    }

    /// Writes this path's `value` into the element of `elements` its filter selects, leaving
    /// every other element as it is. `None` removes the sub-attribute, and the element with it
    /// when nothing but its filter attribute and `primary` is left. A missing element is added
    /// as `rendered` (the element as roster renders it) has it.
    pub fn set_in_elements(
        &self,
        elements: &mut Vec<Value>,
        value: Option<Value>,
        rendered: Option<&Value>,
    ) {
        let (Some(filter), Some(sub)) = (&self.filter, &self.sub_attribute) else {
            return;
        };
        // An element found only by the lookup's fallback (the single primary or only element,
        // for servers that drop `type`) is roster's unless it says it is of another `type`: a
        // role typed `billing` is never taken for roster's primary role.
        let index = select_index(elements, filter).filter(|&index| {
            let element = &elements[index];
            get_ci(element, &filter.attribute).is_some() || get_ci(element, "type").is_none()
        });
        match (index, value) {
            (Some(index), Some(value)) => {
                if let Some(Value::Object(element)) = elements.get_mut(index) {
                    let key = element
                        .keys()
                        .find(|k| k.eq_ignore_ascii_case(sub))
                        .cloned()
                        .unwrap_or_else(|| sub.clone());
                    element.insert(key, value);
                }
            }
            (Some(index), None) => {
                let emptied = match elements.get_mut(index) {
                    Some(Value::Object(element)) => {
                        element.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                        element.keys().all(|k| {
                            k.eq_ignore_ascii_case(&filter.attribute)
                                || k.eq_ignore_ascii_case("primary")
                        })
                    }
                    _ => false,
                };
                if emptied {
                    elements.remove(index);
                }
            }
            (None, Some(value)) => {
                let mut element = rendered.cloned().unwrap_or_else(|| {
                    let mut element = Map::new();
                    element.insert(filter.attribute.clone(), filter.value.to_json());
                    Value::Object(element)
                });
                if let Value::Object(members) = &mut element {
                    members.insert(sub.clone(), value);
                }
                elements.push(element);
            }
            (None, None) => {}
        }
    }

    /// The element of `resource` this path's filter selects.
    #[must_use]
    pub fn element<'a>(&self, resource: &'a Value) -> Option<&'a Value> {
        let container = match &self.schema {
            Some(schema) => get_ci(resource, schema)?,
            None => resource,
        };
        select_element(get_ci(container, &self.attribute)?, self.filter.as_ref()?)
    }
}

/// The object at `key`, replacing any non-object there (only possible for hostile input, as
/// compile rejects overlapping targets).
fn object_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}
