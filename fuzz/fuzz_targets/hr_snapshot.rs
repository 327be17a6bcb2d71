//! Arbitrary bytes as the body of `POST /hr/snapshots`, parsed as CSV, NDJSON and a JSON array
//! by the route's own row parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = roster::fuzzing::hr_snapshot(data);
});
