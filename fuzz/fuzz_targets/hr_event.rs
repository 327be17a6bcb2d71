//! Arbitrary bytes as an HR system's request: the signature header (first line) and the body
//! of `POST /events` and `POST /events:batch`, parsed and validated as the handlers do.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = roster::fuzzing::hr_event(data);
});
