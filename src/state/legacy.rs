//! The one-time import of `volumes.json`, the state file of bai-s3 before the database.
//!
//! Every record that can be read is imported (from a truncated file, every record written out
//! whole), in the same durable transaction that records the name the file will be kept under;
//! then the file is renamed to that name, never deleted. A daemon cut between the commit and
//! the rename finishes the rename at its next start instead of importing the file again.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Deserialize;

use super::db::{self, IMPORTED};
use super::{free_name, now_secs, StoreError, VolumeRecord};
use crate::layout::LEGACY_FILE;

const LEGACY_VERSION: u32 = 1;

/// The JSON state file of earlier versions.
#[derive(Debug, Deserialize)]
struct LegacyDisk {
    version: u32,
    /// `/proc/sys/kernel/random/boot_id` when the file was written.
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    volumes: BTreeMap<String, serde_json::Value>,
}

/// What is to be imported from a `volumes.json`, and where the file is to be kept.
pub(super) struct Import {
    /// The records read, without holders when the file was written in another boot.
    pub records: BTreeMap<String, VolumeRecord>,
    /// The free name the file is to be renamed to once the import is committed.
    pub aside: PathBuf,
    /// What could not be read (each already logged).
    pub problems: Vec<String>,
}

impl Import {
    /// The name `aside` has in the state folder, as the database records it.
    pub fn aside_name(&self) -> String {
        self.aside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Read `<dir>/volumes.json` for import, if there is one that was not imported yet. A file
/// whose import was committed but not yet renamed aside is renamed now and not read again.
pub(super) fn read(
    dir: &Path,
    conn: &Connection,
    boot_id: &str,
) -> Result<Option<Import>, StoreError> {
    let legacy = dir.join(LEGACY_FILE);
    if !legacy.exists() {
        return Ok(None);
    }
    match db::get_meta(conn, IMPORTED)? {
        // The import was committed but the rename did not happen: finish it.
        Some(m) if !dir.join(&m).exists() => {
            fs::rename(&legacy, dir.join(&m))?;
            File::open(dir)?.sync_all()?;
            tracing::info!(file = %legacy.display(), kept = %dir.join(&m).display(), "finished moving the imported state file aside");
            Ok(None)
        }
        _ => {
            let bytes = fs::read(&legacy)?;
            let (mut records, file_boot, problems) = decode(&bytes);
            let aside = free_name(dir, &format!("{LEGACY_FILE}.imported-{}", now_secs()));
            for p in &problems {
                tracing::error!(file = %legacy.display(), copy = %aside.display(), problem = %p, "state file damaged; importing what could be read");
            }
            if !file_boot.is_empty() && file_boot != boot_id {
                for r in records.values_mut() {
                    r.holders.clear();
                }
            }
            Ok(Some(Import {
                records,
                aside,
                problems,
            }))
        }
    }
}

/// Rename the imported file aside, once its import is committed.
pub(super) fn move_aside(dir: &Path, import: &Import, volumes: usize) -> Result<(), StoreError> {
    let legacy = dir.join(LEGACY_FILE);
    fs::rename(&legacy, &import.aside)?;
    File::open(dir)?.sync_all()?;
    tracing::info!(file = %legacy.display(), kept = %import.aside.display(), volumes, "imported the state file of an earlier version");
    Ok(())
}

/// Read as much of a `volumes.json` as can be read: the records, the boot id, and the problems.
fn decode(bytes: &[u8]) -> (BTreeMap<String, VolumeRecord>, String, Vec<String>) {
    let mut problems = Vec::new();
    let disk: LegacyDisk = match serde_json::from_slice(bytes) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("not valid JSON ({e})"));
            return (salvage_truncated(bytes), String::new(), problems);
        }
    };
    if disk.version != LEGACY_VERSION {
        problems.push(format!(
            "unknown version {} (this bai-s3 reads {LEGACY_VERSION})",
            disk.version
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in disk.volumes {
        match serde_json::from_value::<VolumeRecord>(value) {
            Ok(r) => {
                out.insert(name, r);
            }
            Err(e) => problems.push(format!("volume {name:?} could not be read ({e})")),
        }
    }
    (out, disk.boot_id, problems)
}

/// From a truncated `volumes.json`, recover every volume record that was written out completely.
fn salvage_truncated(bytes: &[u8]) -> BTreeMap<String, VolumeRecord> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = BTreeMap::new();
    let Some(start) = text.find("\"volumes\"") else {
        return out;
    };
    let Some(brace) = text[start..].find('{') else {
        return out;
    };
    let mut rest = &text[start + brace + 1..];
    // Walk `"name": {...},` pairs with a streaming deserializer; stop at the first broken one.
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        let mut de = serde_json::Deserializer::from_str(rest).into_iter::<String>();
        let Some(Ok(name)) = de.next() else { break };
        let after = &rest[de.byte_offset()..];
        let Some(colon) = after.find(':') else { break };
        let body = &after[colon + 1..];
        let mut de = serde_json::Deserializer::from_str(body).into_iter::<VolumeRecord>();
        match de.next() {
            Some(Ok(r)) => {
                out.insert(name, r);
                rest = &body[de.byte_offset()..];
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;

    use super::super::testing::{files_named, legacy_bytes, names, rec, this_boot};
    use super::super::Store;
    use crate::layout::LEGACY_FILE;

    #[test]
    fn a_legacy_file_is_imported_once_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut vols = BTreeMap::new();
        vols.insert("v1".to_string(), rec("id", 3));
        let mut v2 = rec("", 0);
        v2.shared = Some("m-1".into());
        vols.insert("v2".to_string(), v2);
        let bytes = legacy_bytes(&this_boot(), &vols);
        fs::write(dir.path().join(LEGACY_FILE), &bytes).unwrap();
        let (s, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(s.records(), vols);
        let kept = report.imported.expect("imported");
        assert_eq!(
            fs::read(&kept).unwrap(),
            bytes,
            "the old file is kept as it was"
        );
        assert!(!dir.path().join(LEGACY_FILE).exists());
        // Later changes win over the kept file at the next start.
        s.update("v1", Some(rec("id", 1)), false).unwrap();
        drop(s);
        let (s, report) = Store::open(dir.path()).unwrap();
        assert!(report.imported.is_none());
        assert_eq!(s.records()["v1"], rec("id", 1));
        assert_eq!(files_named(dir.path(), "imported").len(), 1);
    }

    #[test]
    fn an_import_cut_before_its_rename_is_not_imported_twice() {
        let dir = tempfile::tempdir().unwrap();
        let vols: BTreeMap<_, _> = [("v".to_string(), rec("id", 2))].into();
        fs::write(
            dir.path().join(LEGACY_FILE),
            legacy_bytes(&this_boot(), &vols),
        )
        .unwrap();
        let (s, report) = Store::open(dir.path()).unwrap();
        let kept = report.imported.unwrap();
        s.update("v", Some(rec("id", 1)), false).unwrap();
        drop(s);
        // As if the daemon died between the import's commit and the rename.
        fs::rename(&kept, dir.path().join(LEGACY_FILE)).unwrap();
        let (s, report) = Store::open(dir.path()).unwrap();
        assert!(report.imported.is_none(), "{report:?}");
        assert_eq!(
            s.records()["v"],
            rec("id", 1),
            "the stale file was imported again"
        );
        assert!(kept.exists() && !dir.path().join(LEGACY_FILE).exists());
    }

    #[test]
    fn a_truncated_legacy_file_imports_every_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let vols: BTreeMap<_, _> = ["v1", "v2", "v3"]
            .iter()
            .map(|n| (n.to_string(), rec("i", 1)))
            .collect();
        let full = legacy_bytes(&this_boot(), &vols);
        let cut = String::from_utf8(full.clone())
            .unwrap()
            .find("\"v3\"")
            .unwrap()
            + 20;
        fs::write(dir.path().join(LEGACY_FILE), &full[..cut]).unwrap();
        let (s, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("not valid JSON"));
        assert_eq!(names(&s), vec!["v1", "v2"]);
        assert_eq!(fs::read(report.imported.unwrap()).unwrap(), &full[..cut]);
    }
}
