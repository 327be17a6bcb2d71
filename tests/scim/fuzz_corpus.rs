//! Replays the committed fuzz inputs (`fuzz/seeds/*` and the minimized `fuzz/corpus/*`)
//! through the fuzz targets' entry points, so that `cargo test` keeps every input a fuzzer ever
//! kept — crashes it found included — panic-free, without a fuzzer. The named seeds also check
//! that realistic inputs parse the way production reads them.
use std::path::{Path, PathBuf};
use std::time::Duration;

use roster::fuzzing::{self, HrEventReport, ScimResponseReport};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, sorted; panics when the directory is missing or
/// empty, so a renamed corpus cannot silently test nothing.
fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("seeds").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `entry` on every input of `target`, naming the input that panicked.
fn replay<R>(target: &str, entry: fn(&[u8]) -> R) -> usize {
    let mut count = 0;
    for kind in ["seeds", "corpus"] {
        for (name, bytes) in inputs(kind, target) {
            let outcome = std::panic::catch_unwind(|| {
                let _ = entry(&bytes);
            });
            assert!(outcome.is_ok(), "fuzz/{kind}/{target}/{name} panicked");
            count += 1;
        }
    }
    count
}

#[test]
fn every_committed_scim_response_input_is_handled_without_panic() {
    let n = replay("scim_response", fuzzing::scim_response);
    assert!(n >= 10, "only {n} inputs replayed");
}

#[test]
fn every_committed_hr_event_input_is_handled_without_panic() {
    let n = replay("hr_event", fuzzing::hr_event);
    assert!(n >= 7, "only {n} inputs replayed");
}

fn scim(name: &str) -> ScimResponseReport {
    fuzzing::scim_response(&seed("scim_response", name))
}

#[test]
fn scim_seeds_parse_as_the_client_reads_them() {
    let list = scim("list_response.json");
    assert_eq!(list.ok_body, Some(true));
    assert_eq!(list.list_items, Some(2));
    assert!(!list.token);
    // A ListResponse is not an error body: the 409 reading finds no scimType.
    assert_eq!(list.error_scim_type, None);

    assert_eq!(
        scim("list_response_lowercase_paged.json").list_items,
        Some(1)
    );
    assert_eq!(scim("list_response_empty.json").list_items, Some(0));
    assert_eq!(scim("resource_types.json").list_items, Some(2));

    let error = scim("error_409.json");
    assert_eq!(error.error_scim_type.as_deref(), Some("uniqueness"));
    assert!(
        error
            .error_detail
            .as_deref()
            .is_some_and(|d| d.starts_with("One or more of the attribute values")),
        "{error:?}"
    );

    let throttled = scim("retry_after_seconds.txt");
    assert_eq!(throttled.retry_after, Some(Duration::from_secs(30)));
    // `30` then a JSON object is not one JSON document.
    assert_eq!(throttled.ok_body, None);

    // 03:35:00 is 100 s after the entry points' fixed clock (03:33:20).
    let dated = scim("retry_after_date_html.txt");
    assert_eq!(dated.retry_after, Some(Duration::from_secs(100)));
    assert!(
        dated
            .error_detail
            .as_deref()
            .is_some_and(|d| d.contains("503 Service Unavailable")),
        "{dated:?}"
    );

    assert!(scim("token.json").token);
    assert_eq!(scim("user.json").ok_body, Some(true));
    assert_eq!(scim("group.json").ok_body, Some(true));
    assert_eq!(scim("service_provider_config.json").ok_body, Some(true));
}

fn hr(name: &str) -> HrEventReport {
    fuzzing::hr_event(&seed("hr_event", name))
}

#[test]
fn hr_seeds_parse_and_validate_as_the_events_api_does() {
    for name in ["joiner.json", "mover.json", "leaver.json"] {
        let report = hr(name);
        assert_eq!(report.single, Ok(()), "{name}");
        assert!(report.batch.is_err(), "{name} is not a batch");
        assert!(!report.signature_ok, "{name} carries no signature");
    }
    let batch = hr("batch.json");
    assert_eq!(batch.batch, Ok(3));
    assert!(batch.single.is_err());

    let future = hr("rejected_future.json");
    let detail = future.single.expect_err("an event a year ahead is refused");
    assert!(detail.starts_with("occurred_at:"), "{detail}");

    let unknown = hr("rejected_unknown_field.json");
    let detail = unknown.batch.expect_err("unknown fields are refused");
    assert!(detail.contains("salary"), "{detail}");
    assert!(detail.starts_with("events[0].employee"), "{detail}");

    let signed = hr("signed_leaver.txt");
    assert!(signed.signature_ok, "{signed:?}");
    // A tampered body fails the check.
    let mut tampered = seed("hr_event", "signed_leaver.txt");
    let last = tampered.len() - 3;
    tampered[last] = b'X';
    assert!(!fuzzing::hr_event(&tampered).signature_ok);
}

#[test]
fn every_committed_hr_snapshot_input_is_handled_without_panic() {
    let n = replay("hr_snapshot", fuzzing::hr_snapshot);
    assert!(n >= 8, "only {n} inputs replayed");
}

#[test]
fn hr_snapshot_seeds_parse_as_the_route_reads_them() {
    let report = |name: &str| fuzzing::hr_snapshot(&seed("hr_snapshot", name));
    assert_eq!(report("people.csv").csv, Ok((2, vec![])));
    assert_eq!(report("bom_crlf.csv").csv, Ok((2, vec![])));
    let quote = report("unterminated_quote.csv").csv;
    assert!(
        quote
            .as_ref()
            .is_err_and(|e| e.contains("unterminated quote")),
        "{quote:?}"
    );
    assert_eq!(report("people.ndjson").ndjson, Ok((2, vec![])));
    assert_eq!(report("non_object.json").json, Ok((1, vec![2])));
}
