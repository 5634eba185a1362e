//! Hostile input against the real `bai-s3 serve` (its unix socket, real s3fs, real SeaweedFS),
//! one module a scenario:
//!
//! - `malformed_requests`: malformed and oversized requests;
//! - `hostile_names_and_options`: names and options crafted to escape a path or smuggle an s3fs
//!   option;
//! - `slow_clients`: slow and idle clients; `many_clients`: a crowd of clients;
//! - `unprivileged_client`: a local client without privilege;
//! - `secret_key`: a hunt for the secret key after a busy trace-level session;
//! - `mount_churn`: Mount/Unmount churn and the unmount delay.
//!
//! Each refusal must be a clear `Err`, nothing may be mounted, written or persisted, and the
//! daemon must keep serving.
#[path = "../support/mod.rs"]
mod support;

mod hostile_names_and_options;
mod malformed_requests;
mod many_clients;
mod mount_churn;
mod secret_key;
mod slow_clients;
mod unprivileged_client;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use support::*;

/// The store's rows and boot id, as bytes (None when there is no readable store).
fn state_bytes(d: &Daemon) -> Option<Vec<u8>> {
    store_rows(&d.state_dir).map(|r| format!("{r:?}").into_bytes())
}

/// Names in the mount root (the shared `.s3fs` folder included).
fn mount_root_entries(d: &Daemon) -> BTreeSet<String> {
    fs::read_dir(&d.mount_root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `Err` of a reply, or the raw body when the reply is not a JSON object.
fn err_text(v: &Value) -> String {
    match v {
        Value::Object(_) => v
            .get("Err")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A short printable form of a possibly long or binary string, for messages.
fn shown(s: &str) -> String {
    if s.chars().count() > 40 {
        let head: String = s.chars().take(16).collect();
        format!("{head:?}...({} chars)", s.chars().count())
    } else {
        format!("{s:?}")
    }
}

/// Checks that the daemon still answers List with exactly `names`.
fn list_still_works(d: &Daemon, names: &BTreeSet<String>, what: &str, problems: &mut Vec<String>) {
    match plugin_call(&d.socket, "VolumeDriver.List", "{}") {
        Ok((st, v)) => match result_of(st, &v) {
            Ok(v) => {
                let got: BTreeSet<String> = v
                    .get("Volumes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.get("Name").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if &got != names {
                    problems.push(format!("{what}: List changed: {got:?}, expected {names:?}"));
                }
            }
            Err(e) => problems.push(format!("{what}: the List after it failed: {e}")),
        },
        Err(e) => problems.push(format!("{what}: the List after it failed to connect: {e}")),
    }
}

/// Nothing mounted, no s3fs, state file and mount root unchanged.
fn nothing_changed(
    d: &Daemon,
    state: &Option<Vec<u8>>,
    root: &BTreeSet<String>,
    what: &str,
    problems: &mut Vec<String>,
) {
    if !d.mounts().is_empty() || !d.s3fs_pids().is_empty() {
        problems.push(format!(
            "{what}: something got mounted: mounts {:?}, s3fs {:?}",
            d.mounts()
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>(),
            d.s3fs_pids()
        ));
    }
    if &state_bytes(d) != state {
        problems.push(format!(
            "{what}: the state file changed:\nbefore: {}\nafter:  {}",
            String::from_utf8_lossy(state.as_deref().unwrap_or(b"(none)")),
            String::from_utf8_lossy(state_bytes(d).as_deref().unwrap_or(b"(none)"))
        ));
    }
    let now = mount_root_entries(d);
    if &now != root {
        problems.push(format!(
            "{what}: the mount root changed: {now:?}, was {root:?}"
        ));
    }
}

/// The permission bits of `p` (links followed).
fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}
