//! What must hold for any volume name and options a client sends, whatever the outcome.

use std::collections::BTreeMap;

use bai_s3::options::{validate_volume_name, VolumeOptions, ALLOWED_KEYS};

/// Check the name and options the way Create does, and assert what an accepted volume
/// promises: no value can carry an extra s3fs option or leave its folder, and the canonical
/// map the state file keeps parses back to the same volume.
pub fn check_create(name: &str, opts: &BTreeMap<String, String>) {
    if validate_volume_name(name).is_ok() {
        assert!(
            !name.is_empty()
                && name.len() <= 128
                && !name.contains(['/', ':', ',', '\0'])
                && name != "."
                && name != "..",
            "accepted volume name {name:?}"
        );
    }
    let parsed = VolumeOptions::parse(name, opts, "/etc/bai-s3/backends.toml");
    let o = match parsed {
        Ok(o) => o,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for key in opts.keys() {
        assert!(ALLOWED_KEYS.contains(&key.as_str()), "accepted key {key:?}");
    }
    let map = o.to_map();
    for (k, v) in &map {
        assert!(
            !v.chars()
                .any(|c| c == ',' || c == '=' || c.is_whitespace() || c.is_control()),
            "accepted {k}={v:?}, which could smuggle an s3fs option"
        );
    }
    let b = &o.bucket;
    assert!(
        (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'),
        "accepted bucket {b:?}"
    );
    if let Some(p) = &o.prefix {
        assert!(
            !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "accepted prefix {p:?}"
        );
    }
    let again = VolumeOptions::parse(name, &map, "/etc/bai-s3/backends.toml");
    assert_eq!(
        again.as_ref(),
        Ok(&o),
        "{map:?} does not parse back to the same volume"
    );
}
