//! The volume table on disk: one JSON file in `--state-dir`, replaced atomically on every change.
//!
//! Crash-only: there is no clean-shutdown path that the state depends on. Each change writes the
//! whole table to a temporary file and renames it over the old one, so a reader (the next
//! daemon) sees either the old or the new table, never a mix. Changes to the *set* of volumes
//! (Create, Remove) are fsync'ed too, because they must survive a power cut; changes to holder
//! counts are not, because a power cut also ends every container and every mount (holders of an
//! earlier boot are dropped at start, see [`Store::open`]), while the rename alone already
//! survives a crash of the daemon itself.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

const FILE: &str = "volumes.json";
const VERSION: u32 = 1;

/// What the state file keeps of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The canonical option map (`VolumeOptions::to_map`), re-parsed at start.
    pub options: BTreeMap<String, String>,
    /// RFC 3339 time of the first Create.
    pub created_at: String,
    /// Mount count per caller ID; absent IDs hold nothing.
    #[serde(default)]
    pub holders: BTreeMap<String, u64>,
    /// The shared s3fs mount this volume's bind was made from while it is mounted (its folder
    /// name under `<mount-root>/.s3fs/`), so that a restarted daemon finds and adopts the live
    /// mount from the state and the mount table alone, whatever the backends file says now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Disk {
    version: u32,
    /// `/proc/sys/kernel/random/boot_id` when the file was written: holders of another boot
    /// cannot still hold anything.
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    volumes: BTreeMap<String, serde_json::Value>,
}

/// The persisted table; every change goes through [`Store::update`].
pub struct Store {
    dir: PathBuf,
    boot_id: String,
    records: Mutex<BTreeMap<String, VolumeRecord>>,
}

/// What `Store::open` found that a person should hear about.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Problems read from the file (each already logged).
    pub problems: Vec<String>,
    /// True when the holders of an earlier boot were dropped.
    pub new_boot: bool,
}

impl Store {
    /// Open (or create) the state in `dir`. A corrupt file never stops the daemon and never
    /// silently loses volumes: it is copied aside, every record that can still be read is
    /// kept, and what could not be read is reported.
    pub fn open(dir: &Path) -> io::Result<(Store, OpenReport)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // A folder that already existed keeps no wider access than one made here.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mut report = OpenReport::default();
        let path = dir.join(FILE);
        let mut records = BTreeMap::new();
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(bytes) => {
                let (recs, disk_boot, problems) = decode(&bytes);
                if !problems.is_empty() {
                    let keep = dir.join(format!(
                        "{FILE}.corrupt-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    ));
                    fs::copy(&path, &keep)?;
                    for p in &problems {
                        tracing::error!(file = %path.display(), copy = %keep.display(), problem = %p, "state file damaged; serving what could be read");
                    }
                    report.problems = problems;
                }
                records = recs;
                if !disk_boot.is_empty() && disk_boot != boot_id {
                    report.new_boot = true;
                    for r in records.values_mut() {
                        r.holders.clear();
                    }
                    tracing::info!("state was written before the last reboot; holders of that boot are dropped");
                }
            }
        }
        let store = Store {
            dir: dir.to_path_buf(),
            boot_id,
            records: Mutex::new(records),
        };
        Ok((store, report))
    }

    /// A copy of every record.
    pub fn records(&self) -> BTreeMap<String, VolumeRecord> {
        self.lock().clone()
    }

    /// The state file's path, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Set (`Some`) or delete (`None`) the record of `name` and write the table. When the write
    /// fails the table in memory is left as it was, so memory and disk never disagree.
    pub fn update(
        &self,
        name: &str,
        record: Option<VolumeRecord>,
        durable: bool,
    ) -> io::Result<()> {
        let mut records = self.lock();
        // Apply in place and undo on failure: cheaper than copying the table for every
        // Mount and Unmount.
        let previous = match record {
            Some(r) => records.insert(name.to_string(), r),
            None => records.remove(name),
        };
        let written = self.write(&records, durable);
        if written.is_err() {
            match previous {
                Some(p) => records.insert(name.to_string(), p),
                None => records.remove(name),
            };
        }
        written
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VolumeRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, records: &BTreeMap<String, VolumeRecord>, durable: bool) -> io::Result<()> {
        #[derive(Serialize)]
        struct DiskRef<'a> {
            version: u32,
            boot_id: &'a str,
            volumes: &'a BTreeMap<String, VolumeRecord>,
        }
        let bytes = serde_json::to_vec(&DiskRef {
            version: VERSION,
            boot_id: &self.boot_id,
            volumes: records,
        })?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, self.dir.join(FILE))?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Read as much of a state file as can be read: the records, the boot id, and the problems.
fn decode(bytes: &[u8]) -> (BTreeMap<String, VolumeRecord>, String, Vec<String>) {
    let mut problems = Vec::new();
    let disk: Disk = match serde_json::from_slice(bytes) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("not valid JSON ({e})"));
            return (salvage(bytes), String::new(), problems);
        }
    };
    if disk.version != VERSION {
        problems.push(format!(
            "unknown version {} (this bai-s3 reads {VERSION})",
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

/// From a truncated file, recover every volume record that was written out completely.
fn salvage(bytes: &[u8]) -> BTreeMap<String, VolumeRecord> {
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
    use super::*;

    fn rec(id: &str, n: u64) -> VolumeRecord {
        VolumeRecord {
            options: [("bucket".to_string(), "abc".to_string())].into(),
            created_at: "2026-11-25T00:00:00Z".into(),
            holders: if n > 0 {
                [(id.to_string(), n)].into()
            } else {
                BTreeMap::new()
            },
            shared: None,
        }
    }

    #[test]
    fn round_trip_keeps_volumes_and_holders() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        s.update("a", Some(rec("id1", 2)), true).unwrap();
        s.update("b", Some(rec("x", 0)), false).unwrap();
        s.update("b", None, true).unwrap();
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems.is_empty() && !report.new_boot);
        assert_eq!(s2.records(), s.records());
        assert_eq!(s2.records()["a"].holders["id1"], 2);
        assert!(!s2.records().contains_key("b"));
    }

    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("state");
        let (s, _) = Store::open(&sd).unwrap();
        s.update("a", Some(rec("i", 1)), true).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sd), 0o700);
        assert_eq!(mode(&s.path()), 0o600);
    }

    #[test]
    fn a_failed_write_changes_nothing_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("state");
        let (s, _) = Store::open(&sd).unwrap();
        s.update("a", Some(rec("i", 1)), true).unwrap();
        // A folder where the temporary file goes makes every write fail, even for root.
        fs::create_dir(sd.join(format!("{FILE}.tmp"))).unwrap();
        assert!(s.update("b", Some(rec("i", 1)), true).is_err());
        assert_eq!(s.records().len(), 1);
    }

    #[test]
    fn a_truncated_file_keeps_a_copy_and_every_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        for n in ["v1", "v2", "v3"] {
            s.update(n, Some(rec("i", 1)), false).unwrap();
        }
        let full = fs::read(s.path()).unwrap();
        // Cut inside the third record.
        let cut = String::from_utf8(full.clone())
            .unwrap()
            .find("\"v3\"")
            .unwrap()
            + 20;
        fs::write(s.path(), &full[..cut]).unwrap();
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let names: Vec<String> = s2.records().into_keys().collect();
        assert_eq!(names, vec!["v1", "v2"]);
        let copies = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("corrupt")
            })
            .count();
        assert_eq!(copies, 1);
    }

    #[test]
    fn an_unreadable_record_is_reported_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        s.update("good", Some(rec("i", 1)), false).unwrap();
        let text = fs::read_to_string(s.path())
            .unwrap()
            .replace("\"volumes\":{", "\"volumes\":{\"bad\":{\"options\":7},");
        fs::write(s.path(), text).unwrap();
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert!(
            report.problems[0].contains("\"bad\""),
            "{:?}",
            report.problems
        );
        assert!(s2.records().contains_key("good"));
    }

    #[test]
    fn holders_of_another_boot_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        s.update("a", Some(rec("i", 3)), false).unwrap();
        let text = fs::read_to_string(s.path())
            .unwrap()
            .replace(&s.boot_id, "another-boot");
        fs::write(s.path(), text).unwrap();
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert!(report.new_boot);
        assert!(s2.records()["a"].holders.is_empty());
        assert!(s2.records().contains_key("a"), "the volume itself stays");
    }
}
