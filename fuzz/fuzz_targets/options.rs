//! Volume names and options, shaped like Create's: keys mostly from the allowed list so the
//! fuzzer spends its time on values, where injection would hide.
#![no_main]

use std::collections::BTreeMap;

use bai_s3::options::ALLOWED_KEYS;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|input: (String, Vec<(u8, String, String)>)| {
    let (name, pairs) = input;
    let opts: BTreeMap<String, String> = pairs
        .into_iter()
        .map(|(pick, raw_key, value)| {
            let key = match ALLOWED_KEYS.get(usize::from(pick)) {
                Some(k) => (*k).to_string(),
                None => raw_key,
            };
            (key, value)
        })
        .collect();
    common::check_create(&name, &opts);
});
