//! Any bytes as the body of a protocol request: decoding is a value or an error, never a
//! panic, and a decoded Create passes the checks of `common::check_create`.
#![no_main]

use bai_s3::protocol::{CreateRequest, MountRequest, NameRequest};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|body: &[u8]| {
    let _ = serde_json::from_slice::<NameRequest>(body);
    let _ = serde_json::from_slice::<MountRequest>(body);
    if let Ok(r) = serde_json::from_slice::<CreateRequest>(body) {
        common::check_create(&r.name, &r.opts.unwrap_or_default());
    }
});
