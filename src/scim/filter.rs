//! SCIM filters (RFC 7644 §3.4.2.2): a builder that cannot be injected, and a small parser and
//! evaluator.
//!
//! The client only builds filters; the parser and evaluator are here because PATCH paths with
//! value filters (`members[value eq "…"]`) need them for the PUT fallback, and the dev-target
//! uses them to answer `filter=`.
use serde_json::Value;

use super::error::ScimError;

/// `attr eq "value"` with the value written as a JSON string literal, so that a value holding
/// `"`, `\`, `)` or ` or ` stays one string and cannot change the filter's meaning.
pub fn eq(attr: &str, value: &str) -> Result<String, ScimError> {
    check_attr_path(attr).map_err(ScimError::InvalidInput)?;
    Ok(format!("{attr} eq {}", json_string(value)))
}

/// `value` as a JSON string literal (RFC 8259 §7), quotes included. Written by hand because it
/// is infallible, unlike `serde_json::to_string`'s signature.
#[must_use]
pub fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters. Spaces become `%20`, not `+`,
/// because not every server decodes `+` in a query as a space.
#[must_use]
pub fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks an attribute path: `[schema-urn:]name[.sub]`, names being `ALPHA *(ALPHA / DIGIT /
/// "-" / "_")` (plus `$ref`).
pub fn check_attr_path(path: &str) -> Result<(), String> {
    let attr = match split_urn(path) {
        Some((urn, attr)) => {
            if !urn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'-' | b'_'))
            {
                return Err(format!("invalid schema URN in attribute path `{path}`"));
            }
            attr
        }
        None => path,
    };
    let mut parts = attr.split('.');
    let ok_name = |name: &str| {
        name == "$ref"
            || (name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    };
    let valid = parts.next().is_some_and(ok_name)
        && parts.next().is_none_or(ok_name)
        && parts.next().is_none();
    if valid {
        Ok(())
    } else {
        Err(format!("invalid attribute path `{path}`"))
    }
}

/// Whether `path` starts with `urn:` (any case). Byte-slicing would panic inside a multi-byte
/// character, hence `get`.
#[must_use]
pub fn has_urn_prefix(path: &str) -> bool {
    path.get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
}

/// `("urn:…:User", "name.givenName")` for a URN-qualified path, `None` otherwise.
fn split_urn(path: &str) -> Option<(&str, &str)> {
    if has_urn_prefix(path) {
        let idx = path.rfind(':')?;
        Some((&path[..idx], &path[idx + 1..]))
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "co" => Self::Co,
            "sw" => Self::Sw,
            "ew" => Self::Ew,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "lt" => Self::Lt,
            "le" => Self::Le,
            _ => return None,
        })
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        attr: String,
        op: CompareOp,
        value: Value,
    },
    Present {
        attr: String,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `emails[type eq "work"]`: some element of `attr` matches the inner filter.
    ValuePath {
        attr: String,
        filter: Box<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Str(String),
    Word(String),
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b'[' => {
                tokens.push(Token::OpenBracket);
                i += 1;
            }
            b']' => {
                tokens.push(Token::CloseBracket);
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err("unterminated string".into()),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                let literal = input.get(start..i).ok_or("invalid string")?;
                let value: String = serde_json::from_str(literal)
                    .map_err(|e| format!("invalid string literal: {e}"))?;
                tokens.push(Token::Str(value));
            }
            _ => {
                let start = i;
                while i < bytes.len() && !b" \t\n\r()[]\"".contains(&bytes[i]) {
                    i += 1;
                }
                let word = input.get(start..i).ok_or("invalid token")?;
                tokens.push(Token::Word(word.to_string()));
            }
        }
    }
    Ok(tokens)
}

/// Parses a filter. Errors are messages suitable for a 400 `invalidFilter`.
pub fn parse(input: &str) -> Result<Filter, String> {
    let tokens = tokenize(input)?;
    let mut parser = Parser { tokens, pos: 0 };
    let filter = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!("unexpected token after position {}", parser.pos));
    }
    Ok(filter)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn group(&mut self) -> Result<Filter, String> {
        if self.next() != Some(Token::Open) {
            return Err("expected `(`".into());
        }
        let inner = self.or()?;
        if self.next() != Some(Token::Close) {
            return Err("expected `)`".into());
        }
        Ok(inner)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_keyword("not") && self.tokens.get(self.pos + 1) == Some(&Token::Open) {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.group()?)));
        }
        if self.peek() == Some(&Token::Open) {
            return self.group();
        }
        let attr = match self.next() {
            Some(Token::Word(w)) => w,
            other => return Err(format!("expected an attribute, found {other:?}")),
        };
        check_attr_path(&attr)?;
        if self.peek() == Some(&Token::OpenBracket) {
            self.pos += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::CloseBracket) {
                return Err("expected `]`".into());
            }
            return Ok(Filter::ValuePath {
                attr,
                filter: Box::new(inner),
            });
        }
        let op = match self.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("pr") => {
                return Ok(Filter::Present { attr });
            }
            Some(Token::Word(w)) => {
                CompareOp::parse(&w).ok_or_else(|| format!("unknown operator `{w}`"))?
            }
            other => return Err(format!("expected an operator, found {other:?}")),
        };
        let value = match self.next() {
            Some(Token::Str(s)) => Value::String(s),
            Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                _ => serde_json::from_str::<serde_json::Number>(&w)
                    .map(Value::Number)
                    .map_err(|_| format!("invalid comparison value `{w}`"))?,
            },
            other => return Err(format!("expected a value, found {other:?}")),
        };
        Ok(Filter::Compare { attr, op, value })
    }
}

/// Looks up `key` in an object, ignoring ASCII case (SCIM attribute names are
/// case-insensitive).
#[must_use]
pub fn get_ci<'a>(object: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Every value at `path` in `resource`, multi-valued attributes flattened.
#[must_use]
pub fn values_at<'a>(resource: &'a Value, path: &str) -> Vec<&'a Value> {
    let (base, attr) = match split_urn(path) {
        Some((urn, attr)) => match resource.as_object().and_then(|o| get_ci(o, urn)) {
            Some(ext) => (ext, attr),
            // The core schema's URN qualifies attributes at the top level.
            None => (resource, attr),
        },
        None => (resource, path),
    };
    let mut current = vec![base];
    for segment in attr.split('.') {
        let mut next = Vec::new();
        for value in current {
            let found = value.as_object().and_then(|o| get_ci(o, segment));
            match found {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(Value::Null) | None => {}
                Some(v) => next.push(v),
            }
        }
        current = next;
    }
    current
}

/// Attributes whose string values compare case-sensitively (RFC 7643 `caseExact`); all others
/// compare ignoring case, like `userName` and `emails.value`.
fn case_exact(path: &str) -> bool {
    let attr = split_urn(path)
        .map_or(path, |(_, a)| a)
        .to_ascii_lowercase();
    matches!(
        attr.as_str(),
        "id" | "externalid" | "members.value" | "meta.version"
    )
}

/// Whether a matching attribute compares ignoring case on the client side: `userName`
/// (RFC 7643 §4.1.1) and e-mail addresses (`emails.value`, `caseExact: false` in RFC 7643
/// §8.7.1), whatever the element filter (`emails[type eq "work"].value`). Everything else
/// compares exactly: when in doubt, a look-up finds nothing rather than someone else.
fn matches_ignoring_case(attr: &str) -> bool {
    let plain = match attr.split_once('[') {
        Some((base, rest)) => {
            let sub = rest.split_once(']').map_or("", |(_, sub)| sub);
            format!("{base}{sub}")
        }
        None => attr.to_owned(),
    };
    let plain = match split_urn(&plain) {
        // Only the core User schema's attributes are the ones named here.
        Some((urn, a)) if urn.eq_ignore_ascii_case(super::schemas::USER) => a.to_owned(),
        Some(_) => return false,
        None => plain,
    };
    plain.eq_ignore_ascii_case("userName") || plain.eq_ignore_ascii_case("emails.value")
}

/// The values at a matching attribute: a plain path (`userName`, `name.familyName`,
/// URN-qualified), or one element filter and a sub-attribute (`emails[type eq "work"].value`).
fn matching_values<'a>(resource: &'a Value, attr: &str) -> Vec<&'a Value> {
    let Some((base, rest)) = attr.split_once('[') else {
        return values_at(resource, attr);
    };
    let Some((inner, sub)) = rest.split_once(']') else {
        return Vec::new();
    };
    let Ok(element_filter) = parse(inner) else {
        return Vec::new();
    };
    let elements = values_at(resource, base)
        .into_iter()
        .filter(|e| element_filter.matches(e));
    match sub.strip_prefix('.') {
        Some(sub) => elements.flat_map(|e| values_at(e, sub)).collect(),
        None => elements.collect(),
    }
}

/// Whether `resource` really holds `value` at the matching attribute `attr`: the one rule by
/// which every look-up answer is checked before roster acts on it (a target may ignore or
/// misread `filter=`). `userName` and `emails.value` compare ignoring case, anything else
/// exactly; a number counts as its decimal text; attribute names are read ignoring case.
#[must_use]
pub fn holds_value(resource: &Value, attr: &str, value: &str) -> bool {
    let ignore_case = matches_ignoring_case(attr);
    matching_values(resource, attr).into_iter().any(|held| {
        let text = match held {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Value::Number(n) => std::borrow::Cow::Owned(n.to_string()),
            _ => return false,
        };
        if ignore_case {
            text.to_lowercase() == value.to_lowercase()
        } else {
            text == value
        }
    })
}

impl Filter {
    /// Whether `resource` matches.
    #[must_use]
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(resource) && b.matches(resource),
            Filter::Or(a, b) => a.matches(resource) || b.matches(resource),
            Filter::Not(inner) => !inner.matches(resource),
            Filter::Present { attr } => values_at(resource, attr)
                .iter()
                .any(|v| !matches!(v, Value::String(s) if s.is_empty())),
            Filter::ValuePath { attr, filter } => values_at(resource, attr)
                .into_iter()
                .any(|element| filter.matches(element)),
            Filter::Compare { attr, op, value } => {
                let found = values_at(resource, attr);
                let exact = case_exact(attr);
                if *op == CompareOp::Ne {
                    return !found
                        .iter()
                        .any(|v| compare(v, CompareOp::Eq, value, exact));
                }
                found.iter().any(|v| compare(v, *op, value, exact))
            }
        }
    }
}

fn compare(actual: &Value, op: CompareOp, wanted: &Value, exact: bool) -> bool {
    use std::cmp::Ordering;
    let ordering = match (actual, wanted) {
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                _ => a.cmp(&b),
            }
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
            _ => return false,
        },
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        // A boolean stored as a string ("True"), as some clients send `active`.
        (Value::String(a), Value::Bool(b)) => match a.to_ascii_lowercase().as_str() {
            "true" => true.cmp(b),
            "false" => false.cmp(b),
            _ => return false,
        },
        _ => return false,
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn decode(encoded: &str) -> String {
        // form_urlencoded decodes %XX (and `+`, which we never emit), as servers do.
        url::form_urlencoded::parse(format!("f={encoded}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap()
    }

    #[test]
    fn eq_escapes_hostile_values() {
        assert_eq!(eq("userName", "ada").unwrap(), r#"userName eq "ada""#);
        assert_eq!(eq("userName", r#"a"b"#).unwrap(), r#"userName eq "a\"b""#);
        assert_eq!(eq("userName", r"a\b").unwrap(), r#"userName eq "a\\b""#);
        assert_eq!(
            eq("userName", "x\u{1}").unwrap(),
            r#"userName eq "x\u0001""#
        );
        assert!(eq("userName or 1", "x").is_err());
        assert!(eq("", "x").is_err());
        assert!(eq("emails.value", "x").is_ok());
        assert!(eq("a.b.c", "x").is_err());
        assert!(
            eq(
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
                "1"
            )
            .is_ok()
        );
    }

    #[test]
    fn percent_encoding_leaves_only_unreserved_characters() {
        assert_eq!(percent_encode(r#"a b"c+&=%"#), "a%20b%22c%2B%26%3D%25");
        assert_eq!(decode(&percent_encode("é x+y")), "é x+y");
    }

    #[test]
    fn parser_reads_logic_presence_and_value_paths() {
        let f = parse(r#"userName eq "a" and (active eq true or not (title pr))"#).unwrap();
        let user = json!({"userName": "A", "active": false});
        assert!(f.matches(&user), "case-insensitive userName, title absent");
        let f = parse(r#"emails[type eq "work" and value co "@EXAMPLE"]"#).unwrap();
        assert!(f.matches(&json!({"emails": [{"type": "work", "value": "a@example.com"}]})));
        assert!(!f.matches(&json!({"emails": [{"type": "home", "value": "a@example.com"}]})));
        let f = parse(r#"externalId eq "E1""#).unwrap();
        assert!(
            !f.matches(&json!({"externalId": "e1"})),
            "externalId is caseExact"
        );
        let f = parse(r#"emails.value eq "A@x""#).unwrap();
        assert!(f.matches(&json!({"emails": [{"value": "b@x"}, {"value": "a@x"}]})));
        let f = parse(r#"meta.lastModified gt "2026-01-01T00:00:00Z""#).unwrap();
        assert!(f.matches(&json!({"meta": {"lastModified": "2026-02-01T00:00:00Z"}})));
        let f = parse(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "Sales""#,
        )
        .unwrap();
        assert!(f.matches(&json!({
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "sales"}
        })));
        // `or` binds looser than `and`.
        let f = parse(r#"a eq "1" or b eq "2" and c eq "3""#).unwrap();
        assert!(matches!(f, Filter::Or(_, _)));
    }

    #[test]
    fn look_up_answers_are_checked_with_one_rule() {
        let ada = json!({
            "id": "1", "userName": "Ada@Example.com", "externalId": "E1",
            "emails": [{"type": "home", "value": "ada@home.example"},
                       {"type": "work", "value": "ADA@example.com"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": 42}
        });
        assert!(holds_value(&ada, "userName", "ada@example.com"));
        assert!(holds_value(&ada, "USERNAME", "ADA@EXAMPLE.COM"));
        assert!(holds_value(
            &ada,
            "urn:ietf:params:scim:schemas:core:2.0:User:userName",
            "ada@example.com"
        ));
        assert!(!holds_value(&ada, "userName", "admin@example.com"));
        assert!(holds_value(&ada, "emails.value", "ada@EXAMPLE.com"));
        assert!(holds_value(
            &ada,
            r#"emails[type eq "work"].value"#,
            "ada@example.com"
        ));
        assert!(!holds_value(
            &ada,
            r#"emails[type eq "work"].value"#,
            "ada@home.example"
        ));
        assert!(holds_value(&ada, "externalId", "E1"));
        assert!(
            !holds_value(&ada, "externalId", "e1"),
            "others compare exactly"
        );
        assert!(holds_value(
            &ada,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
            "42"
        ));
        assert!(holds_value(
            &json!({"DisplayName": "Board"}),
            "displayName",
            "Board"
        ));
        assert!(!holds_value(
            &json!({"displayName": "board"}),
            "displayName",
            "Board"
        ));
        assert!(!holds_value(
            &json!({"id": "2"}),
            "userName",
            "ada@example.com"
        ));
        assert!(!holds_value(&json!("text"), "userName", "text"));
        assert!(!holds_value(&ada, "emails[type eq", "ada@example.com"));
    }

    #[test]
    fn parser_refuses_malformed_filters() {
        for bad in [
            "",
            "userName",
            "userName eq",
            r#"userName eq "x"#,
            r#"userName eq "x" garbage"#,
            r#"userName zz "x""#,
            r#"(userName eq "x""#,
            r#"a.b.c eq "x""#,
            "userName eq bare",
            r#"userName eq "\x""#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// The filter the client sends for `value`, after the server URL-decodes it.
    fn built_and_decoded(value: &str) -> String {
        decode(&percent_encode(&eq("userName", value).unwrap()))
    }

    #[test]
    fn hostile_values_stay_one_comparison() {
        for value in [
            r#"a"b"#,
            r"x) or (userName pr",
            r"\",
            r#"\""#,
            r#"" or "1" eq "1"#,
        ] {
            let filter = parse(&built_and_decoded(value)).unwrap();
            assert_eq!(
                filter,
                Filter::Compare {
                    attr: "userName".into(),
                    op: CompareOp::Eq,
                    value: Value::String(value.into())
                }
            );
        }
    }

    proptest! {
        #[test]
        fn any_value_parses_back_to_exactly_one_eq(value in any::<String>()) {
            let decoded = built_and_decoded(&value);
            // Independent of our parser: the text after `userName eq ` is exactly one JSON
            // string literal holding the original value, with nothing after it.
            let literal = decoded.strip_prefix("userName eq ").unwrap();
            let mut stream = serde_json::Deserializer::from_str(literal).into_iter::<String>();
            prop_assert_eq!(stream.next().unwrap().unwrap(), value.clone());
            prop_assert_eq!(stream.byte_offset(), literal.len());
            // And our own parser (used by the dev-target) sees one comparison.
            let parsed = parse(&decoded).unwrap();
            prop_assert_eq!(parsed, Filter::Compare {
                attr: "userName".into(),
                op: CompareOp::Eq,
                value: Value::String(value),
            });
        }

        #[test]
        fn parser_never_panics(input in any::<String>()) {
            let _ = parse(&input);
        }

        #[test]
        fn hostile_fragments_never_break_out(
            parts in proptest::collection::vec(
                prop_oneof![Just("\""), Just("\\"), Just(")"), Just(" or "), Just("("),
                            Just("userName pr"), Just(" and "), Just("]"), Just("a")],
                0..12)
        ) {
            let value: String = parts.concat();
            let parsed = parse(&built_and_decoded(&value)).unwrap();
            prop_assert_eq!(parsed, Filter::Compare {
                attr: "userName".into(),
                op: CompareOp::Eq,
                value: Value::String(value),
            });
        }
    }
}
