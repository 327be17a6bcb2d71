//! Arbitrary bytes as a SCIM target's answer: `Retry-After` (first line), 200 body (ETag
//! back-fill, ListResponse, User/Group, ServiceProviderConfig, token) and error body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = roster::fuzzing::scim_response(data);
});
