//! Paths, prerequisites, polling, random data and unique names, and a seeded generator.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The uid and gid of `nobody`, for a client or process that is a local user without privilege.
pub const NOBODY: u32 = 65534;

/// The name every test's own folder starts with, in `/tmp`: checks of the host's mount table
/// leave `/tmp/bai-s3-test-*` out, since tests running in parallel mount in theirs.
pub const TEST_DIR_PREFIX: &str = "bai-s3-test-";

/// A fresh folder of the test's own (see [`TEST_DIR_PREFIX`]), removed when dropped.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(TEST_DIR_PREFIX)
        .tempdir()
        .expect("a test folder in /tmp")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn weed_bin() -> PathBuf {
    repo().join(".venv/bin/weed")
}

pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bai-s3"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Writes straight to the process's stderr, bypassing the test harness's output capture, so that
/// SKIP lines are seen even for tests that pass.
pub fn say(line: &str) {
    let mut e = io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

/// `prog` is a file in a folder of PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// What the daemon tests need on the machine. Returns true when the test can run. When something
/// is missing: under `CI=true` this panics (a missing prerequisite is a failure there); otherwise
/// it prints a SKIP line and returns false, and the test returns early. The tests that call it
/// are also marked `#[cfg_attr(not(bai_s3_integration), ignore = ..)]`: `build.rs` sets that cfg
/// when it finds the same prerequisites (or under `CI=true`), so a machine without them reports
/// these tests as ignored; this check stays for what changed between build and run.
pub fn prereqs(test: &str) -> bool {
    let mut missing = Vec::new();
    if !on_path("s3fs") {
        missing.push("s3fs is not on PATH (scripts/deps.sh installs it)".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing".to_string());
    }
    if !weed_bin().is_file() {
        missing.push(format!(
            "{} is missing (scripts/deps.sh installs it)",
            weed_bin().display()
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("not running as root (s3fs mounts and umount need it)".to_string());
    }
    require(test, &missing)
}

/// What every check of prerequisites ends with: true when nothing is `missing`. Otherwise, under
/// `CI=true`, a panic naming what is missing (a missing prerequisite is a failure there); outside
/// CI a SKIP line and false (the test then returns early).
pub fn require(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    if in_ci() {
        panic!(
            "{test}: missing prerequisites under CI=true: {}",
            missing.join("; ")
        );
    }
    say(&format!("SKIP {test}: {}", missing.join("; ")));
    false
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, &mut f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `f` until it returns Some or `timeout` passes (then None).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

pub fn random_hex(n_bytes: usize) -> String {
    random_bytes(n_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key string that is easy to search for (letters and digits only).
pub fn random_key(len: usize) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes(len)
        .iter()
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

/// A name unique to this test process and call, valid both as a Docker volume name and as an S3
/// bucket name: lowercase letters, digits and '-', 3..=63 characters, starting with a letter.
pub fn unique_name(tag: &str) -> String {
    unique_name_with("t-", tag, 30)
}

/// [`unique_name`] with its own `prefix` (by which a suite finds its leftovers) and at most
/// `tag_len` characters of `tag`.
pub fn unique_name_with(prefix: &str, tag: &str, tag_len: usize) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(tag_len)
        .collect();
    let name = format!(
        "{prefix}{tag}-{:x}-{n}-{}",
        std::process::id(),
        random_hex(2)
    );
    assert!(name.len() <= 63, "unique name too long: {name}");
    name
}

/// A small xorshift generator seeded from /dev/urandom (the seed is printed, so a failing run
/// can be read back).
pub struct Rng(u64);

impl Rng {
    pub fn new(what: &str) -> Rng {
        let seed = u64::from_le_bytes(random_bytes(8).try_into().unwrap()) | 1;
        say(&format!("{what}: random seed {seed:#x}"));
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
