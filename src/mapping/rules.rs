//! Rule-group rules: checking, evaluating, and parsing their string form.
//!
//! A comparison reads a source (the same names as mappings: `department`,
//! `attributes.cost_center`, ...) and applies an operator, comparing text case-insensitively
//! as SCIM filters do:
//!
//! | op | true when the attribute ... |
//! |---|---|
//! | `eq`, `ne` | equals / does not equal `value` (`ne` is true for an absent attribute) |
//! | `co`, `sw`, `ew` | contains / starts with / ends with `value` |
//! | `pr` | is present and non-empty (no `value`) |
//! | `in` | equals one of `value`, an array of strings |
//!
//! `value` is a string (numbers and booleans are compared as their text). Rules combine with
//! `{"and": [...]}`, `{"or": [...]}`, `{"not": rule}`, at most 8 levels deep.
//!
//! String form ([`parse_group_rule`]), like a SCIM filter; `and` binds tighter than `or`,
//! keywords are case-insensitive:
//!
//! ```text
//! rule       := term { "or" term }
//! term       := factor { "and" factor }
//! factor     := "not" "(" rule ")" | "(" rule ")" | comparison
//! comparison := source op-with-value value | source "pr" | source "in" "[" value { "," value } "]"
//! value      := json-string | number | "true" | "false"
//! ```
//!
//! Example: `department eq "Sales" and (title sw "VP" or attributes.level in ["L7", "L8"])`.
use serde_json::Value;

use super::source::Source;
use super::{GroupRule, IdentityView, MappingError};

/// Deepest accepted nesting of `and`/`or`/`not` (a lone comparison is depth 1).
pub const MAX_RULE_DEPTH: usize = 8;
/// Longest accepted string form, in bytes; the JSON form is held to the same width.
pub const MAX_RULE_TEXT_LEN: usize = 4096;
/// Parentheses may wrap more than the resulting depth (`((a))`), but not without bound.
const MAX_PAREN_DEPTH: usize = 32;
const OPS: [&str; 7] = ["eq", "ne", "co", "sw", "ew", "pr", "in"];

/// Reads the JSON form of a rule (`{"attribute", "op", "value"}`, `{"and": [...]}`,
/// `{"or": [...]}`, `{"not": rule}`) under the same limits as the text form: at most
/// [`MAX_RULE_DEPTH`] levels and [`MAX_RULE_TEXT_LEN`] bytes as text. The shape, depth and
/// width are checked on the parsed value before any rule is built, walking it in place: a
/// derived (untagged) deserializer would copy the whole subtree once per nesting level, so a
/// deep rule around a wide array took gigabytes before it was refused. Then validated like
/// every rule.
pub fn group_rule_from_json(value: &Value) -> Result<GroupRule, MappingError> {
    let mut budget = MAX_RULE_TEXT_LEN;
    check_json(value, "rule", 1, &mut budget)?;
    let rule = build_json(value);
    validate_group_rule(&rule)?;
    Ok(rule)
}

const RULE_SHAPE: &str = "expected {\"attribute\", \"op\", \"value\"}, {\"and\": [...]}, {\"or\": [...]} or {\"not\": rule}";

/// Takes `cost` bytes of the text-form budget, or names the limit.
fn spend(budget: &mut usize, cost: usize, at: &str) -> Result<(), MappingError> {
    match budget.checked_sub(cost) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        None => Err(MappingError::new(
            at,
            format!(
                "rule is longer than {MAX_RULE_TEXT_LEN} bytes (the limit of a rule, counted as its text form)"
            ),
        )),
    }
}

/// Length of a value in the text form (strings quoted); `None` for what no rule holds.
fn scalar_width(value: &Value) -> Option<usize> {
    match value {
        Value::String(text) => Some(text.len() + 2),
        Value::Number(number) => Some(number.to_string().len()),
        Value::Bool(true) => Some(4),
        Value::Bool(false) => Some(5),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The shape, depth and width of a JSON rule, without building it. Depth is counted as
/// [`validate_group_rule`] counts it, and checked before descending.
fn check_json(
    value: &Value,
    at: &str,
    depth: usize,
    budget: &mut usize,
) -> Result<(), MappingError> {
    if depth > MAX_RULE_DEPTH {
        return Err(MappingError::new(
            at,
            format!("rules nest deeper than {MAX_RULE_DEPTH} levels"),
        ));
    }
    let Value::Object(fields) = value else {
        return Err(MappingError::new(at, format!("not a rule; {RULE_SHAPE}")));
    };
    let only = |key: &str| fields.len() == 1 && fields.contains_key(key);
    if only("and") || only("or") {
        let (key, joiner) = if only("and") { ("and", 5) } else { ("or", 4) };
        let at = format!("{at}.{key}");
        let Some(Value::Array(rules)) = fields.get(key) else {
            return Err(MappingError::new(at, "must be an array of rules"));
        };
        // Parentheses around the combination, a keyword between its rules.
        spend(budget, 2 + joiner * rules.len().saturating_sub(1), &at)?;
        for (index, rule) in rules.iter().enumerate() {
            check_json(rule, &format!("{at}[{index}]"), depth + 1, budget)?;
        }
        return Ok(());
    }
    if only("not") {
        let at = format!("{at}.not");
        spend(budget, 6, &at)?;
        return match fields.get("not") {
            Some(rule) => check_json(rule, &at, depth + 1, budget),
            None => Err(MappingError::new(at, "must be a rule")),
        };
    }
    if let Some(key) = fields
        .keys()
        .find(|key| !matches!(key.as_str(), "attribute" | "op" | "value"))
    {
        return Err(MappingError::new(
            format!("{at}.{key}"),
            format!("unknown field; {RULE_SHAPE}"),
        ));
    }
    let text = |key: &str| match fields.get(key) {
        Some(Value::String(text)) => Ok(text.len()),
        _ => Err(MappingError::new(format!("{at}.{key}"), "must be a string")),
    };
    spend(budget, text("attribute")? + 1 + text("op")?, at)?;
    match fields.get("value") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(values)) => {
            let at = format!("{at}.value");
            spend(budget, 3, &at)?;
            for (index, value) in values.iter().enumerate() {
                let width = scalar_width(value).ok_or_else(|| {
                    MappingError::new(
                        format!("{at}[{index}]"),
                        "must be a string, a number or a boolean",
                    )
                })?;
                spend(budget, width + 2, &at)?;
            }
            Ok(())
        }
        Some(value) => {
            let at = format!("{at}.value");
            let width = scalar_width(value).ok_or_else(|| {
                MappingError::new(&at, "must be a string, a number, a boolean or an array")
            })?;
            spend(budget, width + 1, &at)
        }
    }
}

/// Builds a rule from a value [`check_json`] accepted (so every branch here is known to hold).
fn build_json(value: &Value) -> GroupRule {
    let field = |key: &str| value.get(key);
    if let Some(Value::Array(rules)) = field("and") {
        return GroupRule::And {
            and: rules.iter().map(build_json).collect(),
        };
    }
    if let Some(Value::Array(rules)) = field("or") {
        return GroupRule::Or {
            or: rules.iter().map(build_json).collect(),
        };
    }
    if let Some(rule) = field("not") {
        return GroupRule::Not {
            not: Box::new(build_json(rule)),
        };
    }
    let text = |key: &str| {
        field(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    GroupRule::Compare {
        attribute: text("attribute"),
        op: text("op"),
        value: field("value").filter(|value| !value.is_null()).cloned(),
    }
}

/// Checks a rule: known attributes and operators, a value exactly where the operator needs one,
/// non-empty `and`/`or`, depth at most [`MAX_RULE_DEPTH`]. Error paths look like
/// `rule.and[1].op`.
pub fn validate_group_rule(rule: &GroupRule) -> Result<(), MappingError> {
    validate(rule, "rule", 1)
}

fn validate(rule: &GroupRule, at: &str, depth: usize) -> Result<(), MappingError> {
    if depth > MAX_RULE_DEPTH {
        return Err(MappingError::new(
            at,
            format!("rules nest deeper than {MAX_RULE_DEPTH} levels"),
        ));
    }
    match rule {
        GroupRule::Compare {
            attribute,
            op,
            value,
        } => {
            Source::parse(attribute)
                .map_err(|message| MappingError::new(format!("{at}.attribute"), message))?;
            let op = op.to_ascii_lowercase();
            if !OPS.contains(&op.as_str()) {
                return Err(MappingError::new(
                    format!("{at}.op"),
                    format!(
                        "unknown operator `{op}`; expected one of {}",
                        OPS.join(", ")
                    ),
                ));
            }
            let value_at = format!("{at}.value");
            match (op.as_str(), value) {
                ("pr", None) => Ok(()),
                ("pr", Some(_)) => Err(MappingError::new(value_at, "`pr` takes no value")),
                (_, None) => Err(MappingError::new(value_at, format!("`{op}` needs a value"))),
                ("in", Some(Value::Array(values))) if values.is_empty() => {
                    Err(MappingError::new(value_at, "`in` needs at least one value"))
                }
                ("in", Some(Value::Array(values))) => {
                    match values.iter().position(|value| scalar_text(value).is_none()) {
                        Some(index) => Err(MappingError::new(
                            format!("{value_at}[{index}]"),
                            "must be a string, a number or a boolean",
                        )),
                        None => Ok(()),
                    }
                }
                ("in", Some(_)) => Err(MappingError::new(
                    value_at,
                    "`in` needs an array of strings",
                )),
                (_, Some(value)) if scalar_text(value).is_none() => Err(MappingError::new(
                    value_at,
                    format!("`{op}` needs a string, a number or a boolean"),
                )),
                (_, Some(_)) => Ok(()),
            }
        }
        GroupRule::And { and: rules } => validate_all(rules, &format!("{at}.and"), depth),
        GroupRule::Or { or: rules } => validate_all(rules, &format!("{at}.or"), depth),
        GroupRule::Not { not } => validate(not, &format!("{at}.not"), depth + 1),
    }
}

fn validate_all(rules: &[GroupRule], at: &str, depth: usize) -> Result<(), MappingError> {
    if rules.is_empty() {
        return Err(MappingError::new(at, "needs at least one rule"));
    }
    for (index, rule) in rules.iter().enumerate() {
        validate(rule, &format!("{at}[{index}]"), depth + 1)?;
    }
    Ok(())
}

/// Whether `identity` satisfies `rule`. A rule that would not validate matches nobody, so a
/// broken rule can never put everyone into a group.
#[must_use]
pub fn evaluate_group_rule(rule: &GroupRule, identity: &IdentityView) -> bool {
    evaluate(rule, identity, 1).unwrap_or(false)
}

/// `None` when the rule is invalid.
fn evaluate(rule: &GroupRule, identity: &IdentityView, depth: usize) -> Option<bool> {
    if depth > MAX_RULE_DEPTH {
        return None;
    }
    match rule {
        GroupRule::Compare {
            attribute,
            op,
            value,
        } => compare(attribute, op, value.as_ref(), identity),
        GroupRule::And { and: rules } => {
            if rules.is_empty() {
                return None;
            }
            // Every branch is evaluated, so that an invalid one fails the rule whatever the
            // other branches say.
            let mut all = true;
            for rule in rules {
                all &= evaluate(rule, identity, depth + 1)?;
            }
            Some(all)
        }
        GroupRule::Or { or: rules } => {
            if rules.is_empty() {
                return None;
            }
            let mut any = false;
            for rule in rules {
                any |= evaluate(rule, identity, depth + 1)?;
            }
            Some(any)
        }
        GroupRule::Not { not } => evaluate(not, identity, depth + 1).map(|matched| !matched),
    }
}

fn compare(
    attribute: &str,
    op: &str,
    value: Option<&Value>,
    identity: &IdentityView,
) -> Option<bool> {
    let actual = Source::parse(attribute)
        .ok()?
        .read(identity)
        .map(|text| text.to_lowercase());
    let op = op.to_ascii_lowercase();
    let expected = || -> Option<String> {
        match value {
            Some(Value::Array(_)) | None => None,
            Some(value) => scalar_text(value).map(|text| text.to_lowercase()),
        }
    };
    let matched = match op.as_str() {
        "pr" => {
            if value.is_some() {
                return None;
            }
            actual.is_some()
        }
        "in" => {
            let Some(Value::Array(values)) = value else {
                return None;
            };
            let mut wanted = Vec::with_capacity(values.len());
            for value in values {
                wanted.push(scalar_text(value)?.to_lowercase());
            }
            !wanted.is_empty() && actual.is_some_and(|actual| wanted.contains(&actual))
        }
        "eq" => actual.as_ref() == Some(&expected()?),
        "ne" => actual.as_ref() != Some(&expected()?),
        "co" => {
            let expected = expected()?;
            actual.is_some_and(|actual| actual.contains(&expected))
        }
        "sw" => {
            let expected = expected()?;
            actual.is_some_and(|actual| actual.starts_with(&expected))
        }
        "ew" => {
            let expected = expected()?;
            actual.is_some_and(|actual| actual.ends_with(&expected))
        }
        _ => return None,
    };
    Some(matched)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Parses the string form (see the module documentation) and validates the result. Errors
/// have the path `rule` and name the 1-based column.
pub fn parse_group_rule(text: &str) -> Result<GroupRule, MappingError> {
    if text.len() > MAX_RULE_TEXT_LEN {
        return Err(MappingError::new(
            "rule",
            format!("rule is longer than {MAX_RULE_TEXT_LEN} bytes"),
        ));
    }
    let tokens = tokenize(text)?;
    let mut parser = RuleParser {
        text,
        tokens,
        next: 0,
    };
    let rule = parser.rule(1)?;
    if let Some((_, offset)) = parser.tokens.get(parser.next) {
        return Err(parser.error_at(*offset, "unexpected input after the rule"));
    }
    validate_group_rule(&rule)?;
    Ok(rule)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Literal(Value),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Comma,
}

fn column(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |done| done.chars().count() + 1)
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, MappingError> {
    let error = |offset: usize, message: &str| {
        MappingError::new(
            "rule",
            format!("column {}: {message}", column(text, offset)),
        )
    };
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let start = at;
        let token = match byte {
            b' ' | b'\t' | b'\n' | b'\r' => {
                at += 1;
                continue;
            }
            b'(' => Token::Open,
            b')' => Token::Close,
            b'[' => Token::OpenBracket,
            b']' => Token::CloseBracket,
            b',' => Token::Comma,
            b'"' => {
                let mut end = at + 1;
                loop {
                    match bytes.get(end) {
                        None => return Err(error(start, "unterminated string")),
                        Some(b'\\') => end += 2,
                        Some(b'"') => break,
                        Some(_) => end += 1,
                    }
                }
                let literal = text
                    .get(start..=end)
                    .ok_or_else(|| error(start, "unterminated string"))?;
                let value = serde_json::from_str::<String>(literal)
                    .map_err(|parse| error(start, &format!("invalid string ({parse})")))?;
                at = end;
                Token::Literal(Value::String(value))
            }
            b'-' | b'0'..=b'9' => {
                let mut end = at + 1;
                while bytes
                    .get(end)
                    .is_some_and(|byte| byte.is_ascii_digit() || *byte == b'.')
                {
                    end += 1;
                }
                let number = serde_json::from_str::<serde_json::Number>(&text[start..end])
                    .map_err(|_| error(start, "invalid number"))?;
                at = end - 1;
                Token::Literal(Value::Number(number))
            }
            byte if byte.is_ascii_alphabetic() || byte == b'_' => {
                let mut end = at + 1;
                while bytes.get(end).is_some_and(|byte| {
                    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
                }) {
                    end += 1;
                }
                at = end - 1;
                Token::Word(text[start..end].to_owned())
            }
            _ => return Err(error(start, "unexpected character")),
        };
        tokens.push((token, start));
        at += 1;
    }
    Ok(tokens)
}

struct RuleParser<'a> {
    text: &'a str,
    tokens: Vec<(Token, usize)>,
    next: usize,
}

impl RuleParser<'_> {
    fn error_at(&self, offset: usize, message: &str) -> MappingError {
        MappingError::new(
            "rule",
            format!("column {}: {message}", column(self.text, offset)),
        )
    }

    fn error_here(&self, message: &str) -> MappingError {
        let offset = self
            .tokens
            .get(self.next)
            .map_or(self.text.len(), |(_, offset)| *offset);
        self.error_at(offset, message)
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(token, _)| token)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(word)) if word.eq_ignore_ascii_case(keyword))
    }

    fn expect(&mut self, wanted: &Token, what: &str) -> Result<(), MappingError> {
        if self.peek() == Some(wanted) {
            self.next += 1;
            Ok(())
        } else {
            Err(self.error_here(&format!("expected {what}")))
        }
    }

    fn rule(&mut self, depth: usize) -> Result<GroupRule, MappingError> {
        if depth > MAX_PAREN_DEPTH {
            return Err(self.error_here(&format!(
                "rule nests deeper than {MAX_PAREN_DEPTH} parentheses"
            )));
        }
        let mut terms = vec![self.term(depth)?];
        while self.peek_keyword("or") {
            self.next += 1;
            terms.push(self.term(depth)?);
        }
        Ok(single_or(terms, |or| GroupRule::Or { or }))
    }

    fn term(&mut self, depth: usize) -> Result<GroupRule, MappingError> {
        let mut factors = vec![self.factor(depth)?];
        while self.peek_keyword("and") {
            self.next += 1;
            factors.push(self.factor(depth)?);
        }
        Ok(single_or(factors, |and| GroupRule::And { and }))
    }

    fn factor(&mut self, depth: usize) -> Result<GroupRule, MappingError> {
        if self.peek_keyword("not") {
            self.next += 1;
            self.expect(&Token::Open, "`(` after `not`")?;
            let inner = self.rule(depth + 1)?;
            self.expect(&Token::Close, "`)`")?;
            return Ok(GroupRule::Not {
                not: Box::new(inner),
            });
        }
        if self.peek() == Some(&Token::Open) {
            self.next += 1;
            let inner = self.rule(depth + 1)?;
            self.expect(&Token::Close, "`)`")?;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<GroupRule, MappingError> {
        let Some(Token::Word(attribute)) = self.peek().cloned() else {
            return Err(self.error_here("expected an attribute, `not` or `(`"));
        };
        if let Err(message) = Source::parse(&attribute) {
            return Err(self.error_here(&message));
        }
        self.next += 1;
        let Some(Token::Word(op)) = self.peek().cloned() else {
            return Err(self.error_here("expected an operator (eq, ne, co, sw, ew, pr, in)"));
        };
        let op = op.to_ascii_lowercase();
        if !OPS.contains(&op.as_str()) {
            return Err(self.error_here(&format!("unknown operator `{op}`")));
        }
        self.next += 1;
        let value = match op.as_str() {
            "pr" => None,
            "in" => {
                self.expect(&Token::OpenBracket, "`[` after `in`")?;
                let mut values = vec![self.value()?];
                while self.peek() == Some(&Token::Comma) {
                    self.next += 1;
                    values.push(self.value()?);
                }
                self.expect(&Token::CloseBracket, "`,` or `]`")?;
                Some(Value::Array(values))
            }
            _ => Some(self.value()?),
        };
        Ok(GroupRule::Compare {
            attribute,
            op,
            value,
        })
    }

    fn value(&mut self) -> Result<Value, MappingError> {
        let value = match self.peek() {
            Some(Token::Literal(value)) => value.clone(),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(self.error_here("expected a string, a number, true or false")),
        };
        self.next += 1;
        Ok(value)
    }
}

/// One item stays itself; several are combined (`a and b and c` is one flat `and`).
fn single_or(
    mut items: Vec<GroupRule>,
    combine: impl FnOnce(Vec<GroupRule>) -> GroupRule,
) -> GroupRule {
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    combine(items)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// `n` `not`s around `inner`, built without recursion.
    fn nested_nots(n: usize, inner: Value) -> Value {
        (0..n).fold(inner, |rule, _| json!({ "not": rule }))
    }

    #[test]
    fn a_deep_json_rule_is_refused_by_the_shape_check_before_anything_is_built() {
        // 120 levels around a 480 000-element array: the check stops at level 9, having
        // looked at neither the array nor the levels below.
        let bomb = nested_nots(120, json!(vec![0; 480_000]));
        let mut budget = MAX_RULE_TEXT_LEN;
        let refused = check_json(&bomb, "rule", 1, &mut budget).map(|()| "accepted");
        let error = refused.expect_err("a rule 120 levels deep");
        assert!(error.message.contains("deeper than 8 levels"), "{error}");
        assert_eq!(error.path, format!("rule{}", ".not".repeat(8)));
        // Only the `not`s above the limit were counted, nothing below them.
        assert_eq!(budget, MAX_RULE_TEXT_LEN - 8 * 6);
        assert_eq!(group_rule_from_json(&bomb).err(), Some(error));
    }

    #[test]
    fn a_json_rule_is_as_wide_as_its_text_form_may_be() {
        let in_rule = |n: usize| {
            let values: Vec<String> = (0..n).map(|i| format!("v{i:03}")).collect();
            json!({"attribute": "department", "op": "in", "value": values})
        };
        // Each value is 8 bytes as text (`"v000", `): 500 of them fit in 4 KiB, 520 do not.
        let accepted = group_rule_from_json(&in_rule(500));
        assert!(accepted.is_ok(), "{accepted:?}");
        let error = group_rule_from_json(&in_rule(520)).err();
        assert!(
            error
                .as_ref()
                .is_some_and(|e| e.path == "rule.value" && e.message.contains("4096 bytes")),
            "{error:?}"
        );
        // The same rule as text is refused by the text form's own limit.
        let text = format!(
            "department in [{}]",
            (0..520)
                .map(|i| format!("\"v{i:03}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(parse_group_rule(&text).is_err());
    }

    #[test]
    fn the_json_form_reads_what_the_derived_form_reads() {
        let rule = json!({"or": [
            {"and": [{"attribute": "department", "op": "eq", "value": "Sales"},
                     {"not": {"attribute": "title", "op": "pr"}}]},
            {"attribute": "attributes.level", "op": "in", "value": ["L7", 8, true]},
            {"attribute": "title", "op": "pr", "value": null},
        ]});
        let derived: GroupRule = serde_json::from_value(rule.clone()).expect("derived form");
        assert_eq!(group_rule_from_json(&rule), Ok(derived));
        for (bad, path) in [
            (json!([]), "rule"),
            (json!({"and": {}}), "rule.and"),
            (json!({"and": [], "or": []}), "rule.and"),
            (json!({"attribute": "department", "op": 1}), "rule.op"),
            (
                json!({"attribute": "department", "op": "eq", "value": {}}),
                "rule.value",
            ),
            (
                json!({"not": {"attribute": "title", "op": "pr", "extra": 1}}),
                "rule.not.extra",
            ),
        ] {
            let error = group_rule_from_json(&bad).err();
            assert_eq!(
                error.as_ref().map(|e| e.path.as_str()),
                Some(path),
                "{bad}: {error:?}"
            );
        }
    }
}
