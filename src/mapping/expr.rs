//! The mapping expression language.
//!
//! An `expression` in a mapping computes one text value from an identity. It is parsed once,
//! when the app is saved, and evaluated on every render.
//!
//! ```text
//! expression := string | integer | source | call
//! call       := function "(" [ expression { "," expression } ] ")"
//! source     := identity field | "attributes" "." key { "." key }
//! string     := a JSON string literal: "Sales", "a\"b", "\u00e9"
//! integer    := digit { digit }          (only used as split_part's index)
//! key        := [A-Za-z0-9_-]+
//! ```
//!
//! Whitespace between tokens is ignored. Identity fields are `id`, `employee_id`, `user_name`,
//! `email`, `given_name`, `family_name`, `display_name`, `department`, `title`,
//! `manager_employee_id` and `status`; `attributes.<key>` reads the HR `attributes` object
//! (nested keys with dots).
//!
//! Every value is either text or *absent*. An empty string, a missing field, JSON `null`, an
//! array or an object is absent; numbers and booleans in `attributes` read as their JSON text.
//! A mapping whose expression is absent leaves the SCIM attribute out.
//!
//! | function | result |
//! |---|---|
//! | `lower(x)`, `upper(x)`, `trim(x)` | `x` lower-cased, upper-cased, without surrounding whitespace |
//! | `concat(a, b, ...)` | the texts joined; absent arguments count as "" |
//! | `default(a, b, ...)` | the first argument that is not absent |
//! | `switch(x, k1, v1, k2, v2, ..., [fallback])` | the `v` after the first `k` equal to `x` (exact, case-sensitive; an absent `x` matches `""`); else the fallback if the argument count is even, else absent |
//! | `split_part(x, sep, n)` | the `n`th (from 0, an integer literal) piece of `x` split on `sep` |
//! | `email_local(x)`, `email_domain(x)` | the part before / after the last `@` of `x` |
//!
//! Example: `default(lower(attributes.upn), concat(lower(given_name), ".", lower(family_name), "@example.com"))`.
//!
//! Limits, so that a hostile app definition cannot exhaust the stack: at most 1024 bytes and
//! 16 levels of nested calls. Errors name the 1-based column.
use std::fmt;

use super::IdentityView;
use super::source::Source;

/// Longest accepted expression, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 1024;
/// Deepest accepted nesting of function calls.
pub const MAX_EXPRESSION_DEPTH: usize = 16;

/// A parsed expression, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Integer(usize),
    Source(Source),
    Call(Function, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Lower,
    Upper,
    Trim,
    Concat,
    Default,
    Switch,
    SplitPart,
    EmailLocal,
    EmailDomain,
}

impl Function {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "lower" => Self::Lower,
            "upper" => Self::Upper,
            "trim" => Self::Trim,
            "concat" => Self::Concat,
            "default" => Self::Default,
            "switch" => Self::Switch,
            "split_part" => Self::SplitPart,
            "email_local" => Self::EmailLocal,
            "email_domain" => Self::EmailDomain,
            _ => return None,
        })
    }

    /// Accepted argument counts, inclusive.
    fn arity(self) -> (usize, usize) {
        match self {
            Self::Lower | Self::Upper | Self::Trim | Self::EmailLocal | Self::EmailDomain => (1, 1),
            Self::Concat => (1, usize::MAX),
            Self::Default => (2, usize::MAX),
            Self::Switch => (3, usize::MAX),
            Self::SplitPart => (3, 3),
        }
    }
}

/// Why an expression did not parse; `column` is 1-based, in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl Expression {
    /// Parses an expression (see the module documentation for the grammar).
    pub fn parse(input: &str) -> Result<Self, ExpressionError> {
        if input.len() > MAX_EXPRESSION_LEN {
            return Err(ExpressionError {
                column: 1,
                message: format!(
                    "expression is {} bytes long; the limit is {MAX_EXPRESSION_LEN}",
                    input.len()
                ),
            });
        }
        let mut parser = Parser { input, offset: 0 };
        let root = parser.expression(1)?;
        parser.skip_whitespace();
        if parser.offset < input.len() {
            return Err(parser.error("unexpected input after the expression"));
        }
        Ok(Self { root })
    }

    /// An expression that just reads `source`; what a mapping's `source` field compiles to.
    #[must_use]
    pub fn from_source(source: Source) -> Self {
        Self {
            root: Node::Source(source),
        }
    }

    /// The value for `identity`; `None` when absent (never `Some("")`).
    #[must_use]
    pub fn evaluate(&self, identity: &IdentityView) -> Option<String> {
        evaluate(&self.root, identity).filter(|text| !text.is_empty())
    }
}

fn evaluate(node: &Node, identity: &IdentityView) -> Option<String> {
    match node {
        Node::Text(text) => Some(text.clone()).filter(|text| !text.is_empty()),
        Node::Integer(number) => Some(number.to_string()),
        Node::Source(source) => source.read(identity),
        Node::Call(function, args) => call(*function, args, identity),
    }
}

fn call(function: Function, args: &[Node], identity: &IdentityView) -> Option<String> {
    let arg = |index: usize| args.get(index).and_then(|node| evaluate(node, identity));
    let text = match function {
        Function::Lower => arg(0)?.to_lowercase(),
        Function::Upper => arg(0)?.to_uppercase(),
        Function::Trim => arg(0)?.trim().to_owned(),
        Function::Concat => args
            .iter()
            .filter_map(|node| evaluate(node, identity))
            .collect(),
        Function::Default => return args.iter().find_map(|node| evaluate(node, identity)),
        Function::Switch => {
            let subject = arg(0);
            let mut cases = args.get(1..).unwrap_or_default().chunks_exact(2);
            for case in cases.by_ref() {
                if evaluate(&case[0], identity) == subject {
                    return evaluate(&case[1], identity);
                }
            }
            // An odd remainder is the fallback; without it no case matching means absent.
            return cases
                .remainder()
                .first()
                .and_then(|fallback| evaluate(fallback, identity));
        }
        Function::SplitPart => {
            let subject = arg(0)?;
            let separator = arg(1)?;
            let Some(Node::Integer(index)) = args.get(2) else {
                return None;
            };
            subject.split(separator.as_str()).nth(*index)?.to_owned()
        }
        Function::EmailLocal => arg(0)?.rsplit_once('@')?.0.to_owned(),
        Function::EmailDomain => arg(0)?.rsplit_once('@')?.1.to_owned(),
    };
    Some(text).filter(|text| !text.is_empty())
}

/// Recursive descent over the input bytes; every recursion passes `depth`, checked first.
struct Parser<'a> {
    input: &'a str,
    offset: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> ExpressionError {
        self.error_at(self.offset, message)
    }

    fn error_at(&self, offset: usize, message: impl Into<String>) -> ExpressionError {
        let column = self
            .input
            .get(..offset)
            .map_or(1, |done| done.chars().count() + 1);
        ExpressionError {
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.as_bytes().get(self.offset).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|byte| byte.is_ascii_whitespace()) {
            self.offset += 1;
        }
    }

    fn expression(&mut self, depth: usize) -> Result<Node, ExpressionError> {
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(self.error(format!(
                "expression nests deeper than {MAX_EXPRESSION_DEPTH} levels"
            )));
        }
        self.skip_whitespace();
        match self.peek() {
            None => Err(self.error("expected an expression, found the end of the input")),
            Some(b'"') => self.string().map(Node::Text),
            Some(byte) if byte.is_ascii_digit() => self.integer(),
            Some(byte) if byte.is_ascii_alphabetic() || byte == b'_' => self.name(depth),
            Some(_) => Err(self.error("expected a string, a number, a source or a function call")),
        }
    }

    fn string(&mut self) -> Result<String, ExpressionError> {
        let start = self.offset;
        let bytes = self.input.as_bytes();
        let mut cursor = start + 1;
        loop {
            match bytes.get(cursor) {
                None => return Err(self.error_at(start, "unterminated string")),
                Some(b'\\') => cursor += 2,
                Some(b'"') => break,
                Some(_) => cursor += 1,
            }
        }
        let literal = self
            .input
            .get(start..=cursor)
            .ok_or_else(|| self.error_at(start, "unterminated string"))?;
        // serde_json applies exactly the JSON escape rules, surrogate pairs included.
        let text = serde_json::from_str::<String>(literal)
            .map_err(|error| self.error_at(start, format!("invalid string literal: {error}")))?;
        self.offset = cursor + 1;
        Ok(text)
    }

    fn integer(&mut self) -> Result<Node, ExpressionError> {
        let start = self.offset;
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.offset += 1;
        }
        self.input[start..self.offset]
            .parse::<usize>()
            .ok()
            .filter(|number| *number <= 1_000_000)
            .map(Node::Integer)
            .ok_or_else(|| self.error_at(start, "integer out of range"))
    }

    fn name(&mut self, depth: usize) -> Result<Node, ExpressionError> {
        let start = self.offset;
        while self
            .peek()
            .is_some_and(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
        {
            self.offset += 1;
        }
        let name = &self.input[start..self.offset];
        self.skip_whitespace();
        if self.peek() != Some(b'(') {
            return Source::parse(name)
                .map(Node::Source)
                .map_err(|message| self.error_at(start, message));
        }
        let function = Function::from_name(name).ok_or_else(|| {
            self.error_at(
                start,
                format!(
                    "unknown function `{name}`; expected lower, upper, trim, concat, default, \
                     switch, split_part, email_local or email_domain"
                ),
            )
        })?;
        self.offset += 1; // past "("
        let mut args = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b')') {
            self.offset += 1;
        } else {
            loop {
                args.push(self.expression(depth + 1)?);
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => self.offset += 1,
                    Some(b')') => {
                        self.offset += 1;
                        break;
                    }
                    _ => return Err(self.error("expected `,` or `)`")),
                }
            }
        }
        let (min, max) = function.arity();
        if args.len() < min || args.len() > max {
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("at least {min}")
            };
            return Err(self.error_at(
                start,
                format!("`{name}` takes {expected} argument(s), got {}", args.len()),
            ));
        }
        if function == Function::SplitPart && !matches!(args.get(2), Some(Node::Integer(_))) {
            return Err(self.error_at(
                start,
                "`split_part`'s third argument must be an integer literal",
            ));
        }
        Ok(Node::Call(function, args))
    }
}
