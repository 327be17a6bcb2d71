//! Parsing an HR snapshot body as it streams in: CSV (RFC 4180, with the `csv` crate), NDJSON
//! or a JSON array of employees. Pure over `std::io::Read`, so it is fuzzed without a server
//! (`fuzzing::hr_snapshot`). Problems of the file as a whole (a header, an encoding, a cut-off
//! body, too many rows) stop it; a bad row is reported with its line and parsing goes on, so
//! every bad row is listed.
use std::io::{BufRead, BufReader, Read};

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::events::{EmployeeIn, employee_record};
use crate::service::ingest::{EmployeeRecord, FieldUpdate, validate_employee};
use crate::service::snapshot::diff::{RowError, SnapshotRecord};
use crate::service::snapshot::{MAX_ROWS, SnapshotFormat};

/// Why a body as a whole cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("more than {MAX_ROWS} rows; split the population by source")]
    TooManyRows,
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read the request body: {0}")]
    Io(#[from] std::io::Error),
}

/// The identity fields a CSV header or an employee object may name, besides `attributes`.
pub const COLUMNS: [&str; 10] = [
    "employee_id",
    "user_name",
    "email",
    "given_name",
    "family_name",
    "display_name",
    "department",
    "title",
    "manager_employee_id",
    "status",
];

/// Parses `body` in `format`, handing each row (or row error) to `emit` in order.
pub fn parse_snapshot(
    format: SnapshotFormat,
    body: impl Read,
    mut emit: impl FnMut(Result<SnapshotRecord, RowError>),
) -> Result<(), BodyError> {
    let mut ends = EndTracker::new(body);
    let mut rows = 0u64;
    let mut counted = |item: Result<SnapshotRecord, RowError>| {
        rows += 1;
        if rows > MAX_ROWS {
            return Err(BodyError::TooManyRows);
        }
        emit(item);
        Ok(())
    };
    match format {
        SnapshotFormat::Csv => parse_csv(&mut ends, &mut counted)?,
        SnapshotFormat::Ndjson => parse_ndjson(&mut ends, &mut counted)?,
        SnapshotFormat::Json => parse_json_array(&mut ends, &mut counted)?,
    }
    // The `csv` crate reads an unterminated quote to the end of the body as one field; in
    // RFC 4180 every quote comes in a pair (an escaped one is doubled), so an odd count is one.
    if format == SnapshotFormat::Csv && ends.quotes % 2 == 1 {
        return Err(BodyError::Invalid(
            "an unterminated quote: a quoted field is not closed before the end of the body".into(),
        ));
    }
    if format != SnapshotFormat::Json && ends.read_any && ends.last != Some(b'\n') {
        return Err(BodyError::Invalid(
            "the body does not end with a line end: it looks cut off mid-row (every row, the last too, ends with a line end)".into(),
        ));
    }
    Ok(())
}

/// Remembers the last byte read, to tell a body cut off mid-row from a complete one.
struct EndTracker<R> {
    inner: R,
    last: Option<u8>,
    read_any: bool,
    quotes: u64,
}

impl<R> EndTracker<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            last: None,
            read_any: false,
            quotes: 0,
        }
    }
}

impl<R: Read> Read for EndTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.read_any = true;
            self.last = buf.get(n - 1).copied();
            let read = buf.get(..n).unwrap_or_default();
            self.quotes += read.iter().filter(|b| **b == b'"').count() as u64;
        }
        Ok(n)
    }
}

type Emit<'a> = dyn FnMut(Result<SnapshotRecord, RowError>) -> Result<(), BodyError> + 'a;

fn row_error(line: u64, employee_id: Option<&str>, reason: impl Into<String>) -> RowError {
    RowError {
        line,
        employee_id: employee_id.map(str::to_owned),
        reason: reason.into(),
    }
}

/// Checks a row's fields as an event's employee is checked.
fn checked(
    line: u64,
    employee: EmployeeRecord,
    terminated: bool,
) -> Result<SnapshotRecord, RowError> {
    match validate_employee("", &employee) {
        Ok(()) => Ok(SnapshotRecord {
            line,
            employee,
            terminated,
        }),
        Err(e) => Err(row_error(
            line,
            Some(&employee.employee_id),
            e.to_string().trim_start_matches('.').to_owned(),
        )),
    }
}

fn status_of(raw: Option<&str>) -> Result<bool, String> {
    match raw.map(str::trim) {
        None | Some("" | "active") => Ok(false),
        Some("terminated") => Ok(true),
        Some(other) => Err(format!("status: `{other}` is not `active` or `terminated`")),
    }
}

enum Column {
    Field(usize),
    Attribute(String),
}

fn parse_csv(body: impl Read, emit: &mut Emit<'_>) -> Result<(), BodyError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body);
    let header = reader.byte_headers().map_err(csv_file_error)?.clone();
    if header.is_empty() {
        return Err(BodyError::Invalid(
            "the body is empty: a snapshot needs a header row and at least one row".into(),
        ));
    }
    let mut columns = Vec::with_capacity(header.len());
    let mut seen = std::collections::HashSet::new();
    for raw in &header {
        let name = std::str::from_utf8(raw)
            .map_err(|_| {
                BodyError::Invalid(
                    "line 1: the header is not UTF-8; export the file as UTF-8".into(),
                )
            })?
            .trim();
        if !seen.insert(name.to_owned()) {
            return Err(BodyError::Invalid(format!(
                "line 1: the column `{name}` appears twice"
            )));
        }
        let column = if let Some(key) = name.strip_prefix("attributes.") {
            if key.is_empty() {
                return Err(BodyError::Invalid(
                    "line 1: `attributes.` needs a key (`attributes.cost_center`)".into(),
                ));
            }
            Column::Attribute(key.to_owned())
        } else if let Some(i) = COLUMNS.iter().position(|c| *c == name) {
            Column::Field(i)
        } else {
            return Err(BodyError::Invalid(format!(
                "line 1: unknown column `{name}`; the columns are {} and `attributes.<key>`",
                COLUMNS.join(", ")
            )));
        };
        columns.push(column);
    }
    if !seen.contains("employee_id") {
        return Err(BodyError::Invalid(
            "line 1: the header has no `employee_id` column".into(),
        ));
    }
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, csv::Position::line);
                emit(csv_row(line, &columns, &record))?;
            }
            Err(e) => match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    pos,
                    expected_len,
                    len,
                } => {
                    let line = pos.as_ref().map_or(0, csv::Position::line);
                    emit(Err(row_error(
                        line,
                        None,
                        format!("{len} fields where the header has {expected_len}"),
                    )))?;
                }
                _ => return Err(csv_file_error(e)),
            },
        }
    }
    Ok(())
}

fn csv_file_error(e: csv::Error) -> BodyError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => BodyError::Io(io),
        other => BodyError::Invalid(format!("not a valid CSV file: {other:?}")),
    }
}

fn csv_row(
    line: u64,
    columns: &[Column],
    record: &csv::ByteRecord,
) -> Result<SnapshotRecord, RowError> {
    let mut texts: [Option<String>; COLUMNS.len()] = Default::default();
    let mut attributes = Map::new();
    for (column, raw) in columns.iter().zip(record.iter()) {
        let value = std::str::from_utf8(raw)
            .map_err(|_| row_error(line, None, "not valid UTF-8; export the file as UTF-8"))?;
        match column {
            Column::Field(i) => texts[*i] = Some(value.to_owned()),
            Column::Attribute(key) => {
                let value = if value.is_empty() {
                    Value::Null
                } else {
                    Value::String(value.to_owned())
                };
                attributes.insert(key.clone(), value);
            }
        }
    }
    let [
        employee_id,
        user_name,
        email,
        given_name,
        family_name,
        display_name,
        department,
        title,
        manager_employee_id,
        status,
    ] = texts;
    let employee_id = employee_id.unwrap_or_default();
    let terminated = status_of(status.as_deref())
        .map_err(|reason| row_error(line, Some(&employee_id), reason))?;
    // A column the file has is carried: an empty cell clears the field.
    let cell = |v: Option<String>| match v {
        None => FieldUpdate::Keep,
        Some(v) if v.is_empty() => FieldUpdate::Clear,
        Some(v) => FieldUpdate::Set(v),
    };
    let employee = EmployeeRecord {
        employee_id,
        user_name: cell(user_name),
        email: cell(email),
        given_name: cell(given_name),
        family_name: cell(family_name),
        display_name: cell(display_name),
        department: cell(department),
        title: cell(title),
        manager_employee_id: cell(manager_employee_id),
        attributes: if columns.iter().any(|c| matches!(c, Column::Attribute(_))) {
            FieldUpdate::Set(Value::Object(attributes))
        } else {
            FieldUpdate::Keep
        },
    };
    checked(line, employee, terminated)
}

/// One employee object (NDJSON line or array element): the `employee` shape of events, plus
/// `status`.
fn object_row(line: u64, value: Value) -> Result<SnapshotRecord, RowError> {
    let Value::Object(mut map) = value else {
        return Err(row_error(line, None, "not a JSON object (an employee)"));
    };
    let employee_id = map
        .get("employee_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let status = map.remove("status");
    let status = match &status {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(row_error(
                line,
                employee_id.as_deref(),
                "status: must be a string",
            ));
        }
    };
    let terminated =
        status_of(status).map_err(|reason| row_error(line, employee_id.as_deref(), reason))?;
    let employee: EmployeeIn =
        super::body::parse_json(&Value::Object(map).to_string().into_bytes())
            .map_err(|e| row_error(line, employee_id.as_deref(), e.detail))?;
    checked(line, employee_record(&employee), terminated)
}

fn parse_ndjson(body: impl Read, emit: &mut Emit<'_>) -> Result<(), BodyError> {
    let mut reader = BufReader::new(body);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line += 1;
        let mut text = buf.as_slice();
        if line == 1 {
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match serde_json::from_slice::<Value>(text) {
            Ok(value) => object_row(line, value),
            Err(e) if e.classify() == serde_json::error::Category::Io => {
                return Err(BodyError::Invalid(format!("line {line}: {e}")));
            }
            Err(e) => Err(row_error(line, None, format!("not valid JSON: {e}"))),
        };
        emit(item)?;
    }
    Ok(())
}

fn parse_json_array(body: impl Read, emit: &mut Emit<'_>) -> Result<(), BodyError> {
    struct Elements<'e, 'a> {
        emit: &'e mut Emit<'a>,
        stopped: Option<BodyError>,
    }
    impl<'de> Visitor<'de> for &mut Elements<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of employees")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut element = 0u64;
            while let Some(value) = seq.next_element::<Value>()? {
                element += 1;
                if let Err(e) = (self.emit)(object_row(element, value)) {
                    self.stopped = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for &mut Elements<'_, '_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut body = BufReader::new(body);
    // A UTF-8 BOM is accepted, as in the other formats.
    if body.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        body.consume(3);
    }
    let mut elements = Elements {
        emit,
        stopped: None,
    };
    let mut de = serde_json::Deserializer::from_reader(body);
    let result = (&mut elements).deserialize(&mut de).and_then(|()| de.end());
    if let Some(stopped) = elements.stopped {
        return Err(stopped);
    }
    result.map_err(|e| {
        if e.classify() == serde_json::error::Category::Io {
            // `from` hands back the reader's own error (a bad signature, a body too large, a
            // stalled client), so that it is answered as such, not as a body cut off.
            BodyError::Io(std::io::Error::from(e))
        } else {
            BodyError::Invalid(format!("not a JSON array of employees: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        format: SnapshotFormat,
        body: &[u8],
    ) -> Result<Vec<Result<SnapshotRecord, RowError>>, BodyError> {
        let mut rows = Vec::new();
        parse_snapshot(format, body, |r| rows.push(r))?;
        Ok(rows)
    }

    fn csv(body: &str) -> Result<Vec<Result<SnapshotRecord, RowError>>, BodyError> {
        parse(SnapshotFormat::Csv, body.as_bytes())
    }

    #[test]
    fn csv_rows_carry_their_columns_and_lines() {
        let rows = csv("employee_id,email,department,attributes.cost_center\nE1,ada@example.com,Sales,42\nE2,bob@example.com,,\n").unwrap();
        assert_eq!(rows.len(), 2);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.line, 2);
        assert_eq!(first.employee.department, FieldUpdate::Set("Sales".into()));
        assert_eq!(first.employee.title, FieldUpdate::Keep);
        assert_eq!(
            first.employee.attributes,
            FieldUpdate::Set(serde_json::json!({"cost_center": "42"}))
        );
        let second = rows[1].as_ref().unwrap();
        assert_eq!(second.line, 3);
        assert_eq!(second.employee.department, FieldUpdate::Clear);
    }

    #[test]
    fn a_bom_and_crlf_line_ends_are_accepted() {
        let rows = csv("\u{feff}employee_id,email\r\nE1,ada@example.com\r\nE2,bob@example.com\r\n")
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].as_ref().unwrap().employee.employee_id, "E2");
        let rows = parse(
            SnapshotFormat::Ndjson,
            b"\xEF\xBB\xBF{\"employee_id\":\"E1\"}\r\n",
        )
        .unwrap();
        assert!(rows[0].is_ok());
    }

    #[test]
    fn whole_file_problems_stop_with_a_reason() {
        let detail =
            |r: Result<Vec<_>, BodyError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            detail(csv("employee_id,shoe_size\nE1,42\n")).contains("unknown column `shoe_size`")
        );
        assert!(detail(csv("email\nada@example.com\n")).contains("no `employee_id` column"));
        assert!(detail(csv("employee_id,email\nE1,ada@exa")).contains("cut off"));
        assert!(
            detail(csv(
                "employee_id,email\nE1,\"ada@example.com\nE2,b@example.com\n"
            ))
            .contains("unterminated quote")
        );
        // Quoted fields with line ends and doubled quotes are fine.
        assert!(csv("employee_id,title\nE1,\"The \"\"Boss\"\"\nof all\"\n").is_ok());
        assert!(
            detail(parse(SnapshotFormat::Json, b"{\"employee_id\": \"E1\"}"))
                .contains("JSON array")
        );
    }

    #[test]
    fn bad_rows_are_reported_with_their_lines_and_parsing_goes_on() {
        let bytes =
            b"employee_id,email\nE1,not-an-email\nE2\n\xff,x@example.com\nE4,d@example.com\n";
        let rows = parse(SnapshotFormat::Csv, bytes).unwrap();
        let errors: Vec<&RowError> = rows.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(errors[0].reason.contains("email"), "{}", errors[0].reason);
        assert!(errors[1].reason.contains("fields"), "{}", errors[1].reason);
        assert!(errors[2].reason.contains("UTF-8"), "{}", errors[2].reason);
        assert!(rows[3].is_ok());
    }

    #[test]
    fn json_arrays_and_ndjson_take_the_employee_shape() {
        let rows = parse(
            SnapshotFormat::Json,
            br#"[{"employee_id": "E1", "email": "a@example.com", "status": "terminated"}, 7, {"employee_id": "E3", "shoe": 1}]"#,
        )
        .unwrap();
        assert!(rows[0].as_ref().unwrap().terminated);
        assert_eq!(rows[1].as_ref().unwrap_err().line, 2);
        assert!(rows[2].as_ref().unwrap_err().reason.contains("shoe"));
        let rows = parse(SnapshotFormat::Ndjson, b"{\"employee_id\":\"E1\"}\n[1]\n").unwrap();
        assert_eq!(rows[1].as_ref().unwrap_err().line, 2);
    }
}
