//! The volume table on disk: an SQLite database in WAL mode (`<state-dir>/state.db`).
//!
//! Why SQLite: it is crash-safe by design (a commit is one append to the write-ahead log with
//! checksummed frames; a torn or lost tail is discarded at the next open, never half-applied),
//! one change costs one small append however many volumes there are, and an operator can read
//! it with the stock `sqlite3` tool (`sqlite3 -readonly state.db 'select name, record from
//! volumes'`). Table `volumes` holds each volume's [`VolumeRecord`] without its holders as JSON
//! text, so a field added to the record is stored and read back without a schema change; table
//! `holders` holds one row per (volume, ID) with its count, so that a Mount writes one small
//! row however many holders the volume has.
//!
//! Durability is chosen per change ([`Store::update`]'s `durable`): Create and Remove commit with
//! `synchronous=FULL` (the log is fsync'ed before the reply), holder changes with `NORMAL` (no
//! fsync; they survive a crash of the daemon, and a power cut may lose the last ones). Losing
//! those is harmless: a power cut ends every container and every mount, and holders of an
//! earlier boot are dropped at open anyway. A lost holder change can never take a volume
//! definition with it: the log is append-only between checkpoints and a checkpoint syncs it
//! first, so a lost tail rolls back to an earlier version of the same row, which carries the
//! same options (they never change after Create).
//!
//! One daemon per folder: [`Store::open`] takes an exclusive `flock` on `<state-dir>/lock` (which
//! holds the owner's pid) and refuses when another process has it.
//!
//! Upgrades: a folder with the JSON file of earlier versions (`volumes.json`) is imported once
//! (every record, with salvage of a damaged file) and the file is renamed aside, never deleted
//! (`legacy.rs`). A damaged database is copied aside and what can be read is carried into a
//! fresh one (`salvage.rs`); the schema and its queries are in `db.rs`.

mod db;
mod legacy;
mod salvage;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::layout::{DB_FILE, LOCK_FILE};
pub use db::Damage;
use db::{LoadError, Loaded};

/// What the state keeps of one volume.
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

/// Why the store could not be opened or written. A damaged database is not among them: it is
/// salvaged, and [`OpenReport::problems`] says what it cost.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the folder's lock: one daemon per state folder.
    #[error("the state folder {} is in use by {}, which holds {}: one bai-s3 per state folder; stop that one or give this one another --state-dir", .dir.display(), holder(.pid), .lock.display())]
    InUse {
        dir: PathBuf,
        lock: PathBuf,
        /// What the lock file says, when it says something.
        pid: Option<String>,
    },
    /// SQLite refused write-ahead logging, on which every durability promise rests.
    #[error("{}: journal_mode is {mode}, not wal", .path.display())]
    NotWal { path: PathBuf, mode: String },
    /// The fresh database made after a salvage is itself unusable.
    #[error(transparent)]
    Damaged(Damage),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Record(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn holder(pid: &Option<String>) -> String {
    match pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_string(),
    }
}

impl StoreError {
    /// The kind an `io::Error` of this failure has: `WouldBlock` for a folder in use, so that
    /// start-up tells "another daemon" from "cannot open".
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StoreError::InUse { .. } => io::ErrorKind::WouldBlock,
            StoreError::Io(e) => e.kind(),
            _ => io::ErrorKind::Other,
        }
    }
}

/// A write's failure as the `io::Error` that `Error::Persist` carries, with this one inside.
impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            e => io::Error::new(e.kind(), e),
        }
    }
}

/// The persisted table; every change goes through [`Store::update`].
pub struct Store {
    db_path: PathBuf,
    inner: Mutex<Inner>,
    /// Held for the store's life: one daemon per state folder.
    _lock: Flock<File>,
}

struct Inner {
    conn: Connection,
    /// Whether the connection commits with `synchronous=FULL` now.
    durable: bool,
    /// Every readable record, so that `records()` never reads the disk.
    records: BTreeMap<String, VolumeRecord>,
}

/// What `Store::open` found that a person should hear about.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Problems read from the store or the imported file (each already logged).
    pub problems: Vec<String>,
    /// True when the holders of an earlier boot were dropped.
    pub new_boot: bool,
    /// Where an imported `volumes.json` was kept (renamed), when one was imported.
    pub imported: Option<PathBuf>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A name in `dir` starting with `base` that does not exist yet (`base`, `base.1`, ...).
fn free_name(dir: &Path, base: &str) -> PathBuf {
    let mut p = dir.join(base);
    let mut n = 1;
    while p.exists() {
        p = dir.join(format!("{base}.{n}"));
        n += 1;
    }
    p
}

impl Store {
    /// Open (or create) the state in `dir`. A damaged store never stops the daemon and never
    /// silently loses volumes: it is copied aside, every record that can still be read is
    /// kept, and what could not be read is reported. Fails when another process holds the
    /// folder (the message names its pid).
    pub fn open(dir: &Path) -> Result<(Store, OpenReport), StoreError> {
        make_private_folder(dir)?;
        let lock = lock_folder(dir)?;
        let boot_id = current_boot_id();
        let db_path = dir.join(DB_FILE);
        let Loaded {
            conn,
            records: on_disk,
            boot_id: last_boot,
            problems,
        } = load_or_salvage(dir, &db_path)?;
        let mut report = OpenReport {
            problems,
            ..OpenReport::default()
        };
        let mut records = on_disk.clone();
        let mut changed = BTreeSet::new();
        if !last_boot.is_empty() && last_boot != boot_id {
            report.new_boot = true;
            changed.extend(drop_holders(&mut records));
        }
        let mut import = legacy::read(dir, &conn, &boot_id)?;
        if let Some(import) = &mut import {
            report.problems.append(&mut import.problems);
            changed.extend(import.records.keys().cloned());
            records.append(&mut import.records);
        }
        commit_start(
            &conn,
            &on_disk,
            &records,
            &changed,
            &boot_id,
            import.as_ref().map(legacy::Import::aside_name),
        )?;
        if let Some(import) = import {
            legacy::move_aside(dir, &import, records.len())?;
            report.imported = Some(import.aside);
        }
        db::set_durable(&conn, false)?;
        let store = Store {
            db_path,
            inner: Mutex::new(Inner {
                conn,
                durable: false,
                records,
            }),
            _lock: lock,
        };
        Ok((store, report))
    }

    /// A copy of every record.
    pub fn records(&self) -> BTreeMap<String, VolumeRecord> {
        self.lock().records.clone()
    }

    /// The database's path, for messages.
    pub fn path(&self) -> PathBuf {
        self.db_path.clone()
    }

    /// Set (`Some`) or delete (`None`) the record of `name` in one transaction; `durable` makes
    /// it reach the disk (fsync) before this returns. When the write fails nothing changed, on
    /// disk or in memory. The error is an `io::Error` (a [`StoreError`] inside) because that is
    /// what the driver's `Error::Persist` carries.
    pub fn update(
        &self,
        name: &str,
        record: Option<VolumeRecord>,
        durable: bool,
    ) -> io::Result<()> {
        let mut inner = self.lock();
        inner.write(name, record.as_ref(), durable)?;
        match record {
            Some(r) => inner.records.insert(name.to_string(), r),
            None => inner.records.remove(name),
        };
        Ok(())
    }

    /// Make every later write fail inside SQLite (for tests of the failure paths).
    #[cfg(test)]
    pub(crate) fn refuse_writes(&self) {
        let inner = self.lock();
        inner
            .conn
            .pragma_update(None, "query_only", true)
            .expect("query_only");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// One change in one transaction, in the commit mode asked for.
    fn write(
        &mut self,
        name: &str,
        record: Option<&VolumeRecord>,
        durable: bool,
    ) -> Result<(), StoreError> {
        if self.durable != durable {
            db::set_durable(&self.conn, durable)?;
            self.durable = durable;
        }
        let tx = self.conn.unchecked_transaction()?;
        db::write_record(&tx, name, self.records.get(name), record)?;
        tx.commit()?;
        Ok(())
    }
}

/// Make `dir` (0700); a folder that already existed keeps no wider access than one made here.
fn make_private_folder(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// The boot this daemon runs in: holders saved in another boot hold nothing any more.
fn current_boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The database as it is, or, when it is damaged, what `salvage` recovered of it.
fn load_or_salvage(dir: &Path, db_path: &Path) -> Result<Loaded, StoreError> {
    match db::load(db_path) {
        Ok(loaded) => {
            for p in &loaded.problems {
                tracing::error!(file = %db_path.display(), problem = %p, "state damaged; serving what could be read");
            }
            Ok(loaded)
        }
        Err(LoadError::Failed(e)) => Err(e),
        Err(LoadError::Damaged(damage)) => salvage::recover(dir, db_path, &damage),
    }
}

/// Clear the holders of every record (saved in an earlier boot); returns the names changed.
fn drop_holders(records: &mut BTreeMap<String, VolumeRecord>) -> Vec<String> {
    let mut changed = Vec::new();
    for (name, r) in records.iter_mut() {
        if !r.holders.is_empty() {
            r.holders.clear();
            changed.push(name.clone());
        }
    }
    tracing::info!("state was written before the last reboot; holders of that boot are dropped");
    changed
}

/// One durable transaction for everything the start changed: dropped holders, imported
/// records, the boot id, and the name an imported file is to be kept under.
fn commit_start(
    conn: &Connection,
    on_disk: &BTreeMap<String, VolumeRecord>,
    records: &BTreeMap<String, VolumeRecord>,
    changed: &BTreeSet<String>,
    boot_id: &str,
    imported: Option<String>,
) -> Result<(), StoreError> {
    db::set_durable(conn, true)?;
    let tx = conn.unchecked_transaction()?;
    for name in changed {
        db::write_record(&tx, name, on_disk.get(name), records.get(name))?;
    }
    db::set_meta(&tx, db::BOOT_ID, boot_id)?;
    if let Some(file) = imported {
        db::set_meta(&tx, db::IMPORTED, &file)?;
    }
    tx.commit()?;
    Ok(())
}

/// Take `<dir>/lock` for this process, or say who has it.
fn lock_folder(dir: &Path) -> Result<Flock<File>, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut f) => {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            Ok(f)
        }
        Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(StoreError::InUse {
                dir: dir.to_path_buf(),
                lock: path,
                pid: (!pid.is_empty()).then(|| pid.to_string()),
            })
        }
        Err((_, e)) => Err(io::Error::from(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{legacy_bytes, raw, rec};
    use super::*;
    use crate::layout::LEGACY_FILE;

    #[test]
    fn round_trip_keeps_volumes_holders_and_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        let mut a = rec("id1", 2);
        a.shared = Some("abc-0123".into());
        s.update("a", Some(a.clone()), true).unwrap();
        s.update("b", Some(rec("x", 0)), false).unwrap();
        s.update("b", None, true).unwrap();
        let before = s.records();
        drop(s);
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems.is_empty() && !report.new_boot, "{report:?}");
        assert_eq!(s2.records(), before);
        assert_eq!(s2.records()["a"], a);
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
        for f in fs::read_dir(&sd).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
        assert!(
            sd.join(format!("{DB_FILE}-wal")).exists(),
            "not in WAL mode"
        );
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        s.update("a", Some(rec("i", 1)), true).unwrap();
        s.refuse_writes();
        assert!(s.update("b", Some(rec("i", 1)), true).is_err());
        assert!(s.update("a", Some(rec("i", 5)), false).is_err());
        assert!(s.update("a", None, true).is_err());
        assert_eq!(s.records(), [("a".to_string(), rec("i", 1))].into());
        drop(s);
        let (s, _) = Store::open(dir.path()).unwrap();
        assert_eq!(s.records(), [("a".to_string(), rec("i", 1))].into());
    }

    #[test]
    fn a_second_store_on_the_folder_is_refused_naming_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path())
            .err()
            .expect("second open succeeded");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(s);
        Store::open(dir.path()).expect("free again once the first is gone");
    }

    #[test]
    fn holders_of_another_boot_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        s.update("a", Some(rec("i", 3)), false).unwrap();
        drop(s);
        raw(dir.path())
            .execute(
                "UPDATE meta SET value = 'another-boot' WHERE key = 'boot_id'",
                [],
            )
            .unwrap();
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert!(report.new_boot);
        assert!(s2.records()["a"].holders.is_empty());
        drop(s2);
        let (s3, report) = Store::open(dir.path()).unwrap();
        assert!(!report.new_boot);
        assert!(s3.records()["a"].holders.is_empty(), "the drop was saved");
        // Also for an imported file of another boot.
        drop(s3);
        let vols: BTreeMap<_, _> = [("b".to_string(), rec("i", 2))].into();
        fs::write(dir.path().join(LEGACY_FILE), legacy_bytes("old", &vols)).unwrap();
        let (s4, _) = Store::open(dir.path()).unwrap();
        assert!(s4.records()["b"].holders.is_empty());
    }

    /// A power cut loses writes that were not synced. The log grows by appends between
    /// checkpoints, so what a cut can lose is a tail of it after the last fsync, lost whole or
    /// torn (here: cut anywhere, then garbage where the lost bytes were). Every change made
    /// durable before the cut must be there after it.
    #[test]
    fn a_lost_or_torn_log_tail_keeps_every_durable_change() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20 {
            let (s, _) = Store::open(dir.path()).unwrap();
            let created = format!("created-{round}");
            s.update(&created, Some(rec("", 0)), true).unwrap();
            let durable = s.records();
            let synced = fs::metadata(&wal).unwrap().len();
            for i in 0..(next() % 30) {
                s.update(&created, Some(rec(&format!("id{i}"), 1 + i)), false)
                    .unwrap();
            }
            let full = fs::read(&wal).unwrap();
            // The cut: the files as the disk has them, taken while the store is still open.
            let cut_dir = tempfile::tempdir().unwrap();
            fs::copy(dir.path().join(DB_FILE), cut_dir.path().join(DB_FILE)).unwrap();
            let keep = synced as usize + (next() as usize % (full.len() - synced as usize + 1));
            let mut torn = full[..keep].to_vec();
            if next() % 2 == 0 {
                torn.extend((0..(full.len() - keep)).map(|_| next() as u8));
            }
            fs::write(cut_dir.path().join(format!("{DB_FILE}-wal")), &torn).unwrap();
            drop(s);
            let (after, report) = Store::open(cut_dir.path()).unwrap();
            assert!(report.problems.is_empty(), "round {round}: {report:?}");
            let got = after.records();
            for name in durable.keys() {
                assert!(got.contains_key(name), "round {round}: {name} lost");
                assert_eq!(got[name].options, durable[name].options);
            }
        }
    }
}
