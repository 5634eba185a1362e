//! The backends file: named S3 endpoints with their credentials, owned by the host's admin.
//!
//! Credentials never travel in volume options (Docker prints those), so they live here, in a
//! root-only TOML file that is re-read when it changes. A broken or too-open file never replaces
//! the last good configuration: mounts keep working while the admin fixes it.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;

/// A secret string: its `Debug` and `Display` never show it, so it cannot leak into a log line
/// or an error message by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The only way to read the secret: a call that says what it does at every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// One S3 endpoint and its credentials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Backend {
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key: String,
    pub secret_key: Secret,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`; most self-hosted
    /// servers (MinIO, SeaweedFS, Ceph RGW) want this.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// CA bundle (PEM) that signs the endpoint's TLS certificate, when not a public CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    backends: BTreeMap<String, Backend>,
}

/// Why the backends file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendsError {
    #[error("backends file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("backends file {path} is readable or writable by group or others (mode {mode:04o}); it holds secrets, so it is refused: run `chmod 600 {path}`")]
    TooOpen { path: String, mode: u32 },
    #[error("backends file {path} is owned by uid {owner}, not by uid {me} that runs bai-s3; it is refused")]
    WrongOwner { path: String, owner: u32, me: u32 },
    #[error("backends file {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

/// Parse and check the text of a backends file.
pub fn parse(path: &str, text: &str) -> Result<BTreeMap<String, Backend>, BackendsError> {
    let file: File = toml::from_str(text).map_err(|e| BackendsError::Invalid {
        path: path.to_string(),
        // toml's message quotes the offending line, which may hold a secret: keep only the
        // first line of its description, which names the key and the problem.
        message: e
            .message()
            .lines()
            .next()
            .unwrap_or("parse error")
            .to_string(),
    })?;
    for (name, b) in &file.backends {
        let invalid = |message: String| BackendsError::Invalid {
            path: path.to_string(),
            message,
        };
        crate::options::parse_backend_name(name).map_err(|_| {
            invalid(format!(
                "backend name {name:?}: use 1-64 letters, digits, '_' or '-'"
            ))
        })?;
        // Before any message that quotes the endpoint: user info may be a password, and in
        // the endpoint it would reach s3fs's argv and error messages.
        let authority = b
            .endpoint
            .split_once("://")
            .map_or(b.endpoint.as_str(), |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if authority.contains('@') {
            return Err(invalid(format!(
                "backend {name:?}: endpoint must not carry a user name or password (\"user:pass@\" before the host); put the credentials in access-key and secret-key"
            )));
        }
        if !(b.endpoint.starts_with("http://") || b.endpoint.starts_with("https://")) {
            return Err(invalid(format!(
                "backend {name:?}: endpoint {:?} must start with http:// or https://",
                b.endpoint
            )));
        }
        let bad_char = |s: &str| {
            s.is_empty()
                || s.chars()
                    .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        };
        if bad_char(&b.endpoint) || bad_char(&b.region) {
            return Err(invalid(format!(
                "backend {name:?}: endpoint and region must be non-empty, without ',' or spaces"
            )));
        }
        if b.access_key.is_empty() || b.secret_key.expose().is_empty() {
            return Err(invalid(format!(
                "backend {name:?}: access-key and secret-key must not be empty"
            )));
        }
        // s3fs reads keys as lines of text: a control character would split or end one.
        for (what, key) in [
            ("access-key", b.access_key.as_str()),
            ("secret-key", b.secret_key.expose()),
        ] {
            if key.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "backend {name:?}: {what} must not contain control characters"
                )));
            }
        }
    }
    Ok(file.backends)
}

/// What identifies one version of the file on disk, to notice changes with one `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
    mode: u32,
}

struct Loaded {
    signature: Option<Signature>,
    backends: Arc<BTreeMap<String, Backend>>,
    /// Why the file on disk is not in use, while the last good version serves.
    problem: Option<String>,
}

/// The live configuration: re-read on use when the file changed, keeping the last good one.
pub struct Backends {
    path: PathBuf,
    state: Mutex<Loaded>,
}

impl Backends {
    /// Load the file at start-up. A missing or broken file is logged, not fatal: the daemon must
    /// come up (Docker forgets volumes whose Get fails) and the admin can fix the file later.
    pub fn open(path: &Path) -> Self {
        let b = Backends {
            path: path.to_path_buf(),
            state: Mutex::new(Loaded {
                signature: None,
                backends: Arc::new(BTreeMap::new()),
                problem: None,
            }),
        };
        b.current();
        b
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backends in force now, re-reading the file if it changed since the last call.
    pub fn current(&self) -> Arc<BTreeMap<String, Backend>> {
        let sig = std::fs::metadata(&self.path).ok().map(|m| Signature {
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
            mode: m.mode(),
        });
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.signature == sig && (st.signature.is_some() || st.problem.is_some()) {
            return st.backends.clone();
        }
        st.signature = sig;
        match self.read() {
            Ok(map) => {
                let names: Vec<&String> = map.keys().collect();
                tracing::info!(path = %self.path.display(), backends = ?names, "backends file loaded");
                st.backends = Arc::new(map);
                st.problem = None;
            }
            Err(e) => {
                let kept: Vec<&String> = st.backends.keys().collect();
                tracing::warn!(error = %e, kept = ?kept, "backends file not used; keeping the last good configuration");
                st.problem = Some(e.to_string());
            }
        }
        st.backends.clone()
    }

    /// Why the file on disk is not in use, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.current();
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.problem.clone()
    }

    fn read(&self) -> Result<BTreeMap<String, Backend>, BackendsError> {
        let path = self.path.display().to_string();
        let io = |source| BackendsError::Io {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(BackendsError::TooOpen { path, mode });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(BackendsError::WrongOwner {
                path,
                owner: meta.uid(),
                me,
            });
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        parse(&path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = r#"
[backends.default]
endpoint = "http://127.0.0.1:8333"
region = "us-east-1"
access-key = "AKIDEXAMPLE"
secret-key = "wJalrXUtnFEMI-very-secret"
path-style = true
"#;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("backends.toml");
        let tmp = dir.join("backends.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    #[test]
    fn parses_the_documented_shape_and_hides_the_secret() {
        let m = parse("f", GOOD).unwrap();
        let b = &m["default"];
        assert_eq!(b.endpoint, "http://127.0.0.1:8333");
        assert!(b.path_style);
        assert_eq!(b.secret_key.expose(), "wJalrXUtnFEMI-very-secret");
        assert!(!format!("{b:?}").contains("very-secret"));
    }

    #[test]
    fn errors_never_quote_the_secret() {
        let text = GOOD.replace("path-style = true", "path-style = \"maybe\"");
        let e = parse("f", &text).unwrap_err().to_string();
        assert!(!e.contains("very-secret"), "{e}");
        let text = GOOD.replace("secret-key", "secret_key");
        let e = parse("f", &text).unwrap_err().to_string();
        assert!(!e.contains("very-secret"), "{e}");
        for endpoint in [
            "http://admin:very-secret@127.0.0.1:8333",
            "https://very-secret@s3.example.com/path",
            "ftp://u:very-secret@host",
        ] {
            let text = GOOD.replace("http://127.0.0.1:8333", endpoint);
            let e = parse("f", &text).unwrap_err().to_string();
            assert!(!e.contains("very-secret"), "{e}");
            assert!(e.contains("must not carry a user name or password"), "{e}");
        }
        // An '@' in the path is not user info.
        let text = GOOD.replace("http://127.0.0.1:8333", "http://127.0.0.1:8333/a@b");
        assert!(parse("f", &text).is_ok());
        let text = GOOD.replace("http://", "ftp://");
        assert!(parse("f", &text)
            .unwrap_err()
            .to_string()
            .contains("http://"));
    }

    #[test]
    fn refuses_a_file_others_can_read_and_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), GOOD, 0o600);
        let b = Backends::open(&p);
        assert!(b.current().contains_key("default"));
        assert_eq!(b.problem(), None);

        let other = GOOD.replace("[backends.default]", "[backends.other]");
        write(dir.path(), &other, 0o644);
        assert!(b.current().contains_key("default"), "last good kept");
        assert!(b.problem().unwrap().contains("chmod 600"));

        write(dir.path(), &other, 0o600);
        assert!(b.current().contains_key("other"), "fixed file is picked up");
        assert!(!b.current().contains_key("default"));

        write(dir.path(), "not [ toml", 0o600);
        assert!(b.current().contains_key("other"));
        assert!(b.problem().unwrap().contains("not valid"));
    }

    #[test]
    fn a_missing_file_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backends::open(&dir.path().join("nope.toml"));
        assert!(b.current().is_empty());
        assert!(b.problem().is_some());
    }
}
