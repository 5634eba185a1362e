//! Volume names and volume options: the user-facing contract of `docker volume create -o`.
//!
//! Everything a user types passes through here before it can reach a path, the state file or
//! the s3fs command line, so validation is strict: an allow-list of keys, typed values, and no
//! character that could smuggle an extra s3fs option (`,`, `=`, whitespace) into a value.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a volume name or option was refused; the text is shown to the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("invalid volume name {}: {why}; a name is 1-{max} characters of letters, digits, '_', '.' and '-', starting with a letter or digit", shown(name), max = MAX_NAME_LEN)]
    InvalidName { name: String, why: &'static str },
    #[error("unknown volume option {}; allowed options: {}", shown(key), ALLOWED_KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("volume option {} looks like a credential and is refused: Docker stores volume options in plain text and shows them in `docker volume inspect`; put credentials in the backends file ({config}) and choose it with -o backend=NAME", shown(key))]
    Credential { key: String, config: String },
    #[error("invalid value {} for volume option {key:?}: {allowed}", shown(value))]
    BadValue {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

/// How much of a refused name, key or value a message quotes: enough to recognise it, never a
/// megabyte echoed into a reply and the log line.
const SHOWN_CHARS: usize = 80;

/// `s` quoted for a message, cut after [`SHOWN_CHARS`] characters with its full length said.
fn shown(s: &str) -> String {
    let n = s.chars().count();
    if n <= SHOWN_CHARS {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}... ({n} characters)")
}

/// Longest volume name we accept; it becomes one path component.
pub const MAX_NAME_LEN: usize = 128;

/// Every option key a volume may carry, in the order the README documents them.
pub const ALLOWED_KEYS: &[&str] = &[
    "bucket",
    "prefix",
    "backend",
    "ro",
    "uid",
    "gid",
    "umask",
    "create-bucket",
    "cache",
    "parallel-count",
    "multipart-size",
    "stat-cache-expire",
    "negative-cache",
    "compat-dir",
];

/// Keys (or key fragments) that name a credential; such options are refused outright.
const CREDENTIAL_WORDS: &[&str] = &[
    "key",
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "auth",
];

/// Check that `name` can be a volume name: one safe path component, no `:` or `,` (the
/// Backend.AI agent's saved mount list splits on them).
pub fn validate_volume_name(name: &str) -> Result<(), OptionError> {
    let bad = |why| {
        Err(OptionError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("it contains a character that is not allowed");
    }
    Ok(())
}

/// The parsed, validated options of one volume.
///
/// Equality is what "Create again with the same options" means: two option maps that parse to
/// the same value are the same volume, however they were spelled (`ro=1` vs `ro=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    pub bucket: String,
    pub prefix: Option<String>,
    pub backend: String,
    pub ro: bool,
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    pub create_bucket: bool,
    pub tuning: Tuning,
}

/// s3fs data-path settings a volume may choose; part of what an s3fs process is shared by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tuning {
    /// Keep file contents in a local disk cache (s3fs `use_cache`).
    pub cache: bool,
    /// Parallel requests for multipart uploads and ranged reads (s3fs `parallel_count`).
    pub parallel_count: u32,
    /// Part size in MiB for multipart uploads (s3fs `multipart_size`).
    pub multipart_size: u32,
    /// Seconds a file's metadata stays cached (s3fs `stat_cache_expire`): how stale `stat()`
    /// and `ls -l` may be about what another node or S3 client wrote. `open()` asks the store
    /// again whatever this is (s3fs drops a file's cached metadata at each open).
    pub stat_cache_expire: u32,
    /// Remember names that were looked up and missing (s3fs `enable_noobj_cache`). Off by
    /// default: s3fs renews such an entry at every lookup, so a name something polls for that
    /// another writer then uploads would stay missing for as long as the polling goes on.
    #[serde(default)]
    pub negative_cache: bool,
    /// Recognise folders that other S3 clients made without a `dir/` object. Off (s3fs
    /// `notsup_compat_dir`) spares s3fs its probes for other folder spellings on every lookup
    /// of a missing name, which every file creation starts with: for buckets written only
    /// through mounts.
    pub compat_dir: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            cache: false,
            parallel_count: 8,
            multipart_size: 16,
            stat_cache_expire: 1,
            negative_cache: false,
            compat_dir: true,
        }
    }
}

impl VolumeOptions {
    /// Parse Docker's `Opts` map for volume `name`. `config` only names the backends file in
    /// the message that refuses a credential.
    pub fn parse(
        name: &str,
        opts: &BTreeMap<String, String>,
        config: &str,
    ) -> Result<Self, OptionError> {
        let mut o = VolumeOptions {
            bucket: String::new(),
            prefix: None,
            backend: "default".to_string(),
            ro: false,
            uid: 0,
            gid: 0,
            umask: 0o022,
            create_bucket: false,
            tuning: Tuning::default(),
        };
        let mut bucket = None;
        for (key, value) in opts {
            match key.as_str() {
                "bucket" => bucket = Some(parse_bucket(value)?),
                "prefix" => o.prefix = Some(parse_prefix(value)?),
                "backend" => o.backend = parse_backend_name(value)?,
                "ro" => o.ro = parse_bool("ro", value)?,
                "uid" => o.uid = parse_id("uid", value)?,
                "gid" => o.gid = parse_id("gid", value)?,
                "umask" => o.umask = parse_umask(value)?,
                "create-bucket" => o.create_bucket = parse_bool("create-bucket", value)?,
                "cache" => o.tuning.cache = parse_bool("cache", value)?,
                "parallel-count" => {
                    o.tuning.parallel_count = parse_range("parallel-count", value, 1, 64)?
                }
                "multipart-size" => {
                    o.tuning.multipart_size = parse_range("multipart-size", value, 5, 1024)?
                }
                "stat-cache-expire" => {
                    o.tuning.stat_cache_expire = parse_range("stat-cache-expire", value, 0, 86400)?
                }
                "negative-cache" => o.tuning.negative_cache = parse_bool("negative-cache", value)?,
                "compat-dir" => o.tuning.compat_dir = parse_bool("compat-dir", value)?,
                other => {
                    let lower = other.to_ascii_lowercase();
                    if CREDENTIAL_WORDS.iter().any(|w| lower.contains(w)) {
                        return Err(OptionError::Credential {
                            key: other.to_string(),
                            config: config.to_string(),
                        });
                    }
                    return Err(OptionError::UnknownKey {
                        key: other.to_string(),
                    });
                }
            }
        }
        o.bucket = match bucket {
            Some(b) => b,
            // The volume name is the bucket unless said otherwise; it must then be a valid one.
            None => parse_bucket(&name.to_ascii_lowercase()).map_err(|_| OptionError::BadValue {
                key: "bucket",
                value: name.to_string(),
                allowed: "the volume name is not a valid bucket name, so give one with -o bucket=NAME (3-63 characters: lowercase letters, digits, '.' and '-', starting and ending with a letter or digit)",
            })?,
        };
        Ok(o)
    }

    /// The options as a canonical map: what Get shows and what the state file keeps.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("bucket".into(), self.bucket.clone());
        if let Some(p) = &self.prefix {
            m.insert("prefix".into(), p.clone());
        }
        m.insert("backend".into(), self.backend.clone());
        m.insert("ro".into(), self.ro.to_string());
        m.insert("uid".into(), self.uid.to_string());
        m.insert("gid".into(), self.gid.to_string());
        m.insert("umask".into(), format!("{:03o}", self.umask));
        m.insert("create-bucket".into(), self.create_bucket.to_string());
        m.insert("cache".into(), self.tuning.cache.to_string());
        m.insert(
            "parallel-count".into(),
            self.tuning.parallel_count.to_string(),
        );
        m.insert(
            "multipart-size".into(),
            self.tuning.multipart_size.to_string(),
        );
        m.insert(
            "stat-cache-expire".into(),
            self.tuning.stat_cache_expire.to_string(),
        );
        m.insert(
            "negative-cache".into(),
            self.tuning.negative_cache.to_string(),
        );
        m.insert("compat-dir".into(), self.tuning.compat_dir.to_string());
        m
    }

    /// Name the options that differ from `other`, for the "created again with different
    /// options" refusal.
    pub fn differences(&self, other: &VolumeOptions) -> Vec<String> {
        let (a, b) = (self.to_map(), other.to_map());
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |v: Option<&String>| v.map_or("(none)".to_string(), |v| v.clone());
                format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }
}

impl fmt::Display for VolumeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .to_map()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Refuse characters that mean something to s3fs's `-o` parser or to a shell reading logs.
fn reject_special(
    key: &'static str,
    value: &str,
    allowed: &'static str,
) -> Result<(), OptionError> {
    if value
        .chars()
        .any(|c| c == ',' || c == '=' || c.is_whitespace() || c.is_control())
    {
        return Err(OptionError::BadValue {
            key,
            value: value.to_string(),
            allowed,
        });
    }
    Ok(())
}

const BUCKET_RULE: &str =
    "3-63 characters: lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, not shaped like an IP address";

/// S3 bucket naming rules (the DNS-compatible subset every S3 server accepts).
fn parse_bucket(value: &str) -> Result<String, OptionError> {
    let bad = || OptionError::BadValue {
        key: "bucket",
        value: value.to_string(),
        allowed: BUCKET_RULE,
    };
    let b = value.as_bytes();
    if !(3..=63).contains(&b.len())
        || !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
        || value.contains("..")
        || value.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(bad());
    }
    Ok(value.to_string())
}

const PREFIX_RULE: &str = "a key prefix like 'projects/alpha': path components of letters, digits and '_', '.', '-', '+', '@', separated by single '/', no '.' or '..' component, at most 512 characters";

const PREFIX_EMPTY: &str = "the prefix names no folder; leave the prefix option out to mount the whole bucket, or name a folder like 'projects/alpha'";

/// A prefix becomes a path below the bucket's root, so it must be a clean relative path.
fn parse_prefix(value: &str) -> Result<String, OptionError> {
    reject_special("prefix", value, PREFIX_RULE)?;
    let trimmed = value.trim_matches('/');
    let bad = || OptionError::BadValue {
        key: "prefix",
        value: value.to_string(),
        allowed: PREFIX_RULE,
    };
    // `prefix=/` names no folder: taking it as the whole bucket would hand out the bucket where
    // an orchestrator meant a user's sub-folder. The whole bucket is the option left out.
    if trimmed.is_empty() {
        return Err(OptionError::BadValue {
            key: "prefix",
            value: value.to_string(),
            allowed: PREFIX_EMPTY,
        });
    }
    if trimmed.len() > 512 {
        return Err(bad());
    }
    for comp in trimmed.split('/') {
        if comp.is_empty()
            || comp == "."
            || comp == ".."
            || !comp
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-+@".contains(c))
        {
            return Err(bad());
        }
    }
    Ok(trimmed.to_string())
}

/// Backend names are keys of the backends file and appear in paths of shared mounts.
pub fn parse_backend_name(value: &str) -> Result<String, OptionError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(OptionError::BadValue {
            key: "backend",
            value: value.to_string(),
            allowed: "the name of a backend in the backends file: 1-64 letters, digits, '_' or '-'",
        });
    }
    Ok(value.to_string())
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, OptionError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(OptionError::BadValue {
            key,
            value: value.to_string(),
            allowed: "true or false",
        }),
    }
}

fn parse_id(key: &'static str, value: &str) -> Result<u32, OptionError> {
    let allowed = "a numeric id from 0 to 4294967294";
    reject_special(key, value, allowed)?;
    match value.parse::<u32>() {
        Ok(v) if v != u32::MAX && value.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(OptionError::BadValue {
            key,
            value: value.to_string(),
            allowed,
        }),
    }
}

fn parse_umask(value: &str) -> Result<u32, OptionError> {
    let allowed = "an octal mask of 3 or 4 digits from 000 to 0777, e.g. 022 or 0002";
    let ok = (3..=4).contains(&value.len()) && value.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(value, 8) {
        Ok(v) if ok && v <= 0o777 => Ok(v),
        _ => Err(OptionError::BadValue {
            key: "umask",
            value: value.to_string(),
            allowed,
        }),
    }
}

fn parse_range(key: &'static str, value: &str, min: u32, max: u32) -> Result<u32, OptionError> {
    let allowed: &'static str = match key {
        "parallel-count" => "an integer from 1 to 64",
        "multipart-size" => "an integer number of MiB from 5 to 1024",
        _ => "an integer number of seconds from 0 to 86400",
    };
    match value.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) && value.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(OptionError::BadValue {
            key,
            value: value.to_string(),
            allowed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeOptions, OptionError> {
        VolumeOptions::parse("vol1", &opts(pairs), "/etc/bai-s3/backends.toml")
    }

    #[test]
    fn defaults_follow_the_contract() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.bucket, "vol1");
        assert_eq!(o.backend, "default");
        assert_eq!(o.prefix, None);
        assert!(!o.ro && !o.create_bucket);
        assert_eq!((o.uid, o.gid, o.umask), (0, 0, 0o022));
        // Bounded staleness by default: metadata for 1 s, no memory of missing names.
        assert_eq!(o.tuning.stat_cache_expire, 1);
        assert!(!o.tuning.negative_cache);
    }

    #[test]
    fn every_documented_key_parses() {
        let o = parse(&[
            ("bucket", "team-data"),
            ("prefix", "/projects/alpha/"),
            ("backend", "minio-1"),
            ("ro", "true"),
            ("uid", "1000"),
            ("gid", "1001"),
            ("umask", "0002"),
            ("create-bucket", "yes"),
            ("cache", "on"),
            ("parallel-count", "16"),
            ("multipart-size", "32"),
            ("stat-cache-expire", "0"),
            ("negative-cache", "true"),
            ("compat-dir", "false"),
        ])
        .unwrap();
        assert_eq!(o.bucket, "team-data");
        assert_eq!(o.prefix.as_deref(), Some("projects/alpha"));
        assert_eq!(o.backend, "minio-1");
        assert!(o.ro && o.create_bucket && o.tuning.cache);
        assert_eq!((o.uid, o.gid, o.umask), (1000, 1001, 0o002));
        assert_eq!(o.tuning.parallel_count, 16);
        assert_eq!(o.tuning.multipart_size, 32);
        assert_eq!(o.tuning.stat_cache_expire, 0);
        assert!(o.tuning.negative_cache);
        assert!(!o.tuning.compat_dir);
    }

    #[test]
    fn unknown_and_credential_keys_are_named() {
        let e = parse(&[("colour", "blue")]).unwrap_err().to_string();
        assert!(
            e.contains("\"colour\"") && e.contains("allowed options"),
            "{e}"
        );
        for key in [
            "secret-key",
            "access_key",
            "AWS_SECRET_ACCESS_KEY",
            "password",
            "token",
        ] {
            let e = parse(&[(key, "x")]).unwrap_err();
            assert!(matches!(e, OptionError::Credential { .. }), "{key}: {e}");
            assert!(e.to_string().contains("backends file"));
            assert!(
                !e.to_string().contains("\"x\""),
                "the value must not be echoed"
            );
        }
    }

    #[test]
    fn values_cannot_smuggle_s3fs_options() {
        for (k, v) in [
            ("prefix", "a,allow_root"),
            ("prefix", "a=b"),
            ("prefix", "a b"),
            ("prefix", "a\nb"),
            ("prefix", "../etc"),
            ("prefix", "a//b"),
            ("bucket", "bucket,passwd_file=/x"),
            ("uid", "1000,umask=0"),
            ("umask", "022,allow_other"),
            ("backend", "default,x"),
            ("ro", "true,rw"),
            ("parallel-count", "8 -o x"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            match &e {
                OptionError::BadValue { key, .. } => assert_eq!(*key, k, "{e}"),
                other => panic!("{k}={v}: {other}"),
            }
        }
    }

    #[test]
    fn a_prefix_that_names_no_folder_is_refused() {
        for v in ["", "/", "//", "///"] {
            let e = parse(&[("prefix", v)]).unwrap_err();
            assert!(
                matches!(e, OptionError::BadValue { key: "prefix", .. }),
                "prefix={v:?}: {e}"
            );
            assert!(e.to_string().contains("whole bucket"), "{e}");
        }
    }

    #[test]
    fn refused_input_is_quoted_cut_short() {
        let huge = "x".repeat(1 << 20);
        for e in [
            parse(&[("uid", &huge)]).unwrap_err(),
            parse(&[(huge.as_str(), "1")]).unwrap_err(),
            parse(&[(format!("secret{huge}").as_str(), "1")]).unwrap_err(),
            validate_volume_name(&huge).unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(text.len() < 1024, "{} bytes: {}", text.len(), &text[..200]);
            assert!(
                text.contains("(1048576 characters)") || text.contains("(1048582 characters)"),
                "{text}"
            );
        }
        // Short values are still quoted whole, so a person can see what was wrong.
        let e = parse(&[("uid", "12a")]).unwrap_err().to_string();
        assert!(e.contains("\"12a\""), "{e}");
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "team-data", "a.b.c", "0day"] {
            assert!(parse(&[("bucket", good)]).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "Team",
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.1",
            &"a".repeat(64),
        ] {
            assert!(parse(&[("bucket", bad)]).is_err(), "{bad}");
        }
        // A volume name that cannot be a bucket needs an explicit bucket.
        let e = VolumeOptions::parse("V_1", &BTreeMap::new(), "f").unwrap_err();
        assert!(e.to_string().contains("-o bucket="), "{e}");
    }

    #[test]
    fn numbers_are_range_checked() {
        assert!(parse(&[("uid", "-1")]).is_err());
        assert!(parse(&[("uid", "4294967295")]).is_err());
        assert!(parse(&[("uid", "+5")]).is_err());
        assert!(parse(&[("umask", "0999")]).is_err());
        assert!(parse(&[("umask", "7")]).is_err());
        assert!(parse(&[("umask", "07777")]).is_err());
        assert!(parse(&[("parallel-count", "0")]).is_err());
        assert!(parse(&[("multipart-size", "4")]).is_err());
        assert!(parse(&[("ro", "maybe")]).is_err());
        let e = parse(&[("negative-cache", "sometimes")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"sometimes\" for volume option \"negative-cache\": true or false"
        );
    }

    #[test]
    fn volume_names_are_one_safe_component() {
        for good in ["v", "bai-s3.0123abcd", "vf_1.ro", "A-b"] {
            assert!(validate_volume_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(300);
        for bad in [
            "", "a/b", "..", ".hidden", "a:b", "a,b", "a\0b", "ünï", "a b", &long,
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn same_meaning_compares_equal_and_differences_are_named() {
        let a = parse(&[("ro", "1"), ("umask", "22")]);
        assert!(a.is_err(), "two-digit umask is refused");
        let a = parse(&[("ro", "1"), ("umask", "022")]).unwrap();
        let b = parse(&[("ro", "true"), ("umask", "0022")]).unwrap();
        assert_eq!(a, b);
        let c = parse(&[("ro", "false")]).unwrap();
        let d = a.differences(&c);
        assert_eq!(d, vec!["ro: true -> false".to_string()]);
    }
}

#[cfg(test)]
mod properties {
    //! Hostile input: whatever Docker (or anyone on the socket) sends as options, parsing never
    //! panics, and nothing it accepts can reach s3fs's `-o` parser or a path unchecked.
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(ALLOWED_KEYS).prop_map(str::to_string),
            "[a-z_-]{1,12}",
            any::<String>(),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9./-]{0,20}",
            "[0-7]{3,4}",
            "(true|false|1|0)",
            "[ -~]{0,30}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_never_panics_and_accepted_values_are_clean(
            name in prop_oneof!["[a-z0-9][a-z0-9.-]{2,20}", any::<String>()],
            opts in proptest::collection::btree_map(key(), value(), 0..6),
        ) {
            let _ = validate_volume_name(&name);
            if let Ok(o) = VolumeOptions::parse(&name, &opts, "f") {
                for v in o.to_map().values() {
                    prop_assert!(!v.contains(',') && !v.contains('=') && !v.chars().any(char::is_whitespace), "{v:?}");
                }
                if let Some(p) = &o.prefix {
                    prop_assert!(p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                }
                // The canonical map means the same volume when read back.
                let again = VolumeOptions::parse(&name, &o.to_map(), "f").unwrap();
                prop_assert_eq!(again, o);
            }
        }

        #[test]
        fn accepted_names_are_one_path_component(name in any::<String>()) {
            if validate_volume_name(&name).is_ok() {
                let p = std::path::Path::new(&name);
                prop_assert_eq!(p.components().count(), 1);
                prop_assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))));
                prop_assert!(!name.contains(':') && !name.contains(','));
            }
        }
    }
}
