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
//! (every record, with salvage of a damaged file) and the file is renamed aside, never deleted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::layout::{DB_FILE, LEGACY_FILE, LOCK_FILE};
const LEGACY_VERSION: u32 = 1;
/// `PRAGMA user_version` of the schema this code writes.
const SCHEMA: i64 = 1;

const UPSERT: &str = "INSERT INTO volumes (name, record) VALUES (?1, ?2) \
                      ON CONFLICT (name) DO UPDATE SET record = excluded.record";
const DELETE: &str = "DELETE FROM volumes WHERE name = ?1";
const UPSERT_HOLDER: &str = "INSERT INTO holders (volume, id, count) VALUES (?1, ?2, ?3) \
                             ON CONFLICT (volume, id) DO UPDATE SET count = excluded.count";
const DELETE_HOLDER: &str = "DELETE FROM holders WHERE volume = ?1 AND id = ?2";
const DELETE_HOLDERS: &str = "DELETE FROM holders WHERE volume = ?1";

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

/// The persisted table; every change goes through [`Store::update`].
pub struct Store {
    dir: PathBuf,
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

fn sql_err(e: rusqlite::Error) -> io::Error {
    io::Error::other(e)
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
    pub fn open(dir: &Path) -> io::Result<(Store, OpenReport)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // A folder that already existed keeps no wider access than one made here.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let lock = lock_folder(dir)?;
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mut report = OpenReport::default();
        let db_path = dir.join(DB_FILE);

        let (conn, mut records, old_boot) = match open_db(&db_path) {
            Ok(Loaded {
                conn,
                records,
                boot_id,
                problems,
            }) => {
                for p in &problems {
                    tracing::error!(file = %db_path.display(), problem = %p, "state damaged; serving what could be read");
                }
                report.problems.extend(problems);
                (conn, records, boot_id)
            }
            Err(OpenError::Other(e)) => return Err(e),
            Err(OpenError::Damage(damage)) => {
                let (conn, records, boot, problems) = recover(dir, &db_path, &damage)?;
                report.problems.extend(problems);
                (conn, records, boot)
            }
        };
        let on_disk = records.clone();
        let mut changed: Vec<String> = Vec::new();
        if !old_boot.is_empty() && old_boot != boot_id {
            report.new_boot = true;
            for (name, r) in records.iter_mut() {
                if !r.holders.is_empty() {
                    r.holders.clear();
                    changed.push(name.clone());
                }
            }
            tracing::info!(
                "state was written before the last reboot; holders of that boot are dropped"
            );
        }

        let legacy = dir.join(LEGACY_FILE);
        let mut import: Option<PathBuf> = None;
        if legacy.exists() {
            let marker: Option<String> = conn
                .query_row("SELECT value FROM meta WHERE key = 'imported'", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql_err)?;
            match marker {
                // The import was committed but the rename did not happen: finish it.
                Some(m) if !dir.join(&m).exists() => {
                    fs::rename(&legacy, dir.join(&m))?;
                    File::open(dir)?.sync_all()?;
                    tracing::info!(file = %legacy.display(), kept = %dir.join(&m).display(), "finished moving the imported state file aside");
                }
                _ => {
                    let bytes = fs::read(&legacy)?;
                    let (recs, file_boot, problems) = decode_legacy(&bytes);
                    let aside = free_name(dir, &format!("{LEGACY_FILE}.imported-{}", now_secs()));
                    for p in &problems {
                        tracing::error!(file = %legacy.display(), copy = %aside.display(), problem = %p, "state file damaged; importing what could be read");
                    }
                    report.problems.extend(problems);
                    let other_boot = !file_boot.is_empty() && file_boot != boot_id;
                    for (name, mut r) in recs {
                        if other_boot {
                            r.holders.clear();
                        }
                        records.insert(name.clone(), r);
                        changed.push(name);
                    }
                    import = Some(aside);
                }
            }
        }

        // One durable transaction: dropped holders, imported records, the boot id, the marker.
        {
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(sql_err)?;
            let tx = conn.unchecked_transaction().map_err(sql_err)?;
            changed.sort();
            changed.dedup();
            for name in &changed {
                write_record(&tx, name, on_disk.get(name), records.get(name))?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('boot_id', ?1)",
                [&boot_id],
            )
            .map_err(sql_err)?;
            if let Some(aside) = &import {
                let file = aside
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('imported', ?1)",
                    [&file],
                )
                .map_err(sql_err)?;
            }
            tx.commit().map_err(sql_err)?;
        }
        if let Some(aside) = import {
            fs::rename(&legacy, &aside)?;
            File::open(dir)?.sync_all()?;
            tracing::info!(file = %legacy.display(), kept = %aside.display(), volumes = records.len(), "imported the state file of an earlier version");
            report.imported = Some(aside);
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err)?;
        let store = Store {
            dir: dir.to_path_buf(),
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

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Set (`Some`) or delete (`None`) the record of `name` in one transaction; `durable` makes
    /// it reach the disk (fsync) before this returns. When the write fails nothing changed, on
    /// disk or in memory.
    pub fn update(
        &self,
        name: &str,
        record: Option<VolumeRecord>,
        durable: bool,
    ) -> io::Result<()> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.durable != durable {
            let mode = if durable { "FULL" } else { "NORMAL" };
            inner
                .conn
                .pragma_update(None, "synchronous", mode)
                .map_err(sql_err)?;
            inner.durable = durable;
        }
        let tx = inner.conn.unchecked_transaction().map_err(sql_err)?;
        write_record(&tx, name, inner.records.get(name), record.as_ref())?;
        tx.commit().map_err(sql_err)?;
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

/// A record without its holders: what the `volumes` table keeps (holders have their own table,
/// so that a Mount writes one small row, not the volume's whole record).
fn definition(r: &VolumeRecord) -> VolumeRecord {
    VolumeRecord {
        holders: BTreeMap::new(),
        ..r.clone()
    }
}

/// Write the change from `prev` (what the database holds for `name`) to `new`: the definition
/// only when it changed, holder rows only for the IDs whose counts changed. Inside the caller's
/// transaction.
fn write_record(
    conn: &Connection,
    name: &str,
    prev: Option<&VolumeRecord>,
    new: Option<&VolumeRecord>,
) -> io::Result<()> {
    let exec = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map(|_| ())
            .map_err(sql_err)
    };
    let Some(r) = new else {
        exec(DELETE, &[&name])?;
        return exec(DELETE_HOLDERS, &[&name]);
    };
    let def = definition(r);
    if prev.map(definition).as_ref() != Some(&def) {
        exec(UPSERT, &[&name, &serde_json::to_string(&def)?])?;
    }
    let empty = BTreeMap::new();
    let old = match prev {
        Some(p) => &p.holders,
        None => {
            // Rows of a record this store could not read earlier are not this one's.
            exec(DELETE_HOLDERS, &[&name])?;
            &empty
        }
    };
    for (id, n) in &r.holders {
        if old.get(id) != Some(n) {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            exec(UPSERT_HOLDER, &[&name, id, &n])?;
        }
    }
    for id in old.keys().filter(|id| !r.holders.contains_key(*id)) {
        exec(DELETE_HOLDER, &[&name, id])?;
    }
    Ok(())
}

/// Every holder row, per volume.
fn read_holders(conn: &Connection) -> rusqlite::Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut st = conn.prepare("SELECT volume, id, count FROM holders")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (v, id, n) = row?;
        if n > 0 {
            out.entry(v).or_default().insert(id, n as u64);
        }
    }
    Ok(out)
}

/// Take `<dir>/lock` for this process, or say who has it.
fn lock_folder(dir: &Path) -> io::Result<Flock<File>> {
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
            let who = if pid.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {pid})")
            };
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the state folder {} is in use by {who}, which holds {}: one bai-s3 per state folder; stop that one or give this one another --state-dir",
                    dir.display(),
                    path.display()
                ),
            ))
        }
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

struct Loaded {
    conn: Connection,
    records: BTreeMap<String, VolumeRecord>,
    boot_id: String,
    /// Rows that could not be read (they stay in the database).
    problems: Vec<String>,
}

/// Why an existing database could not be opened.
enum OpenError {
    /// It is damaged (not a database, corrupt pages, unreadable schema): kept aside and
    /// salvaged.
    Damage(String),
    /// Anything else (permissions, a lock held by someone else, I/O): the daemon does not
    /// start, and the files are left as they are.
    Other(io::Error),
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, DatabaseCorrupt | NotADatabase) =>
            {
                OpenError::Damage(e.to_string())
            }
            _ => OpenError::Other(sql_err(e)),
        }
    }
}

fn connect(path: &Path) -> Result<Connection, OpenError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Other(io::Error::other(format!(
            "{}: journal_mode is {mode}, not wal",
            path.display()
        ))));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Open the database (creating it 0600 when missing), check it, and read every record.
fn open_db(path: &Path) -> Result<Loaded, OpenError> {
    // SQLite gives its -wal and -shm files the database file's mode: make it 0600 first.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|f| f.set_permissions(fs::Permissions::from_mode(0o600)))
        .map_err(OpenError::Other)?;
    let conn = connect(path)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(OpenError::Damage(format!(
            "integrity check failed: {check}"
        )));
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let mut problems = Vec::new();
    if version > SCHEMA {
        problems.push(format!(
            "schema version {version} is newer than this bai-s3's ({SCHEMA}); reading what it knows"
        ));
    }
    create_schema(&conn)?;
    let mut records = BTreeMap::new();
    {
        let mut st = conn.prepare("SELECT name, record FROM volumes ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, json) = row?;
            match serde_json::from_str::<VolumeRecord>(&json) {
                Ok(r) => {
                    records.insert(name, r);
                }
                Err(e) => problems.push(format!(
                    "volume {name:?} could not be read ({e}); its row is kept"
                )),
            }
        }
    }
    for (v, h) in read_holders(&conn)? {
        if let Some(r) = records.get_mut(&v) {
            r.holders = h;
        }
    }
    let boot_id = read_boot(&conn)?;
    Ok(Loaded {
        conn,
        records,
        boot_id,
        problems,
    })
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS volumes (name TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL) STRICT;
         CREATE TABLE IF NOT EXISTS holders (volume TEXT NOT NULL, id TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (volume, id)) STRICT, WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) STRICT;",
    )?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < SCHEMA {
        conn.pragma_update(None, "user_version", SCHEMA)?;
    }
    Ok(())
}

fn read_boot(conn: &Connection) -> rusqlite::Result<String> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or_default())
}

/// A damaged database: copy its files aside, read what can be read, start a fresh one with it.
#[allow(clippy::type_complexity)]
fn recover(
    dir: &Path,
    db: &Path,
    damage: &str,
) -> io::Result<(
    Connection,
    BTreeMap<String, VolumeRecord>,
    String,
    Vec<String>,
)> {
    let base = format!("{DB_FILE}.corrupt-{}", now_secs());
    let copy = free_name(dir, &base);
    let copy_name = copy
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(base);
    // Byte copies, taken before SQLite touches the files again; the log and shared-memory
    // files under the copy's name so that `sqlite3 <copy>` reads them together.
    fs::copy(db, &copy)?;
    for suffix in ["-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        if f.exists() {
            fs::copy(&f, dir.join(format!("{copy_name}{suffix}")))?;
        }
    }
    let mut problems = vec![format!("the database could not be used: {damage}")];
    let (records, boot, more) = salvage_db(db);
    problems.extend(more);
    for p in &problems {
        tracing::error!(file = %db.display(), copy = %copy.display(), problem = %p, "state damaged; serving what could be read");
    }
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        match fs::remove_file(&f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let fresh = open_db(db).map_err(|e| match e {
        OpenError::Other(e) => e,
        OpenError::Damage(d) => io::Error::other(d),
    })?;
    {
        fresh
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql_err)?;
        let tx = fresh.conn.unchecked_transaction().map_err(sql_err)?;
        for (name, r) in &records {
            write_record(&tx, name, None, Some(r))?;
        }
        tx.commit().map_err(sql_err)?;
    }
    File::open(dir)?.sync_all()?;
    Ok((fresh.conn, records, boot, problems))
}

/// Every record that can be read from a damaged database: a scan forward and one backward by
/// rowid, each up to the first page that fails, so that one bad page loses only its rows.
fn salvage_db(db: &Path) -> (BTreeMap<String, VolumeRecord>, String, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let conn = match Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("nothing could be read: {e}"));
            return (out, String::new(), problems);
        }
    };
    let boot = read_boot(&conn).unwrap_or_default();
    let mut errors = Vec::new();
    for order in ["ASC", "DESC"] {
        let sql = format!("SELECT name, record FROM volumes ORDER BY rowid {order}");
        let mut st = match conn.prepare(&sql) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                break;
            }
        };
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)));
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for row in rows {
            match row {
                Ok((name, json)) => {
                    if out.contains_key(&name) {
                        continue;
                    }
                    match serde_json::from_str::<VolumeRecord>(&json) {
                        Ok(r) => {
                            out.insert(name, r);
                        }
                        Err(e) => problems.push(format!("volume {name:?} could not be read ({e})")),
                    }
                }
                Err(e) => {
                    errors.push(e.to_string());
                    break;
                }
            }
        }
    }
    // Holders as far as they can be read (a lost one only undercounts a mount of this boot).
    if let Ok(h) = read_holders(&conn) {
        for (v, h) in h {
            if let Some(r) = out.get_mut(&v) {
                r.holders = h;
            }
        }
    }
    errors.dedup();
    for e in errors {
        problems.push(format!("records lost to damage: {e}"));
    }
    (out, boot, problems)
}

/// Read as much of a `volumes.json` as can be read: the records, the boot id, and the problems.
fn decode_legacy(bytes: &[u8]) -> (BTreeMap<String, VolumeRecord>, String, Vec<String>) {
    let mut problems = Vec::new();
    let disk: LegacyDisk = match serde_json::from_slice(bytes) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("not valid JSON ({e})"));
            return (salvage_legacy(bytes), String::new(), problems);
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
fn salvage_legacy(bytes: &[u8]) -> BTreeMap<String, VolumeRecord> {
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

    fn names(s: &Store) -> Vec<String> {
        s.records().into_keys().collect()
    }

    fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(part))
            .collect();
        v.sort();
        v
    }

    /// A connection of its own to the database (as an operator's `sqlite3` would have).
    fn raw(dir: &Path) -> Connection {
        Connection::open(dir.join(DB_FILE)).unwrap()
    }

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

    /// `volumes.json` exactly as bai-s3 before the database wrote it.
    fn legacy_bytes(boot: &str, vols: &BTreeMap<String, VolumeRecord>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": 1, "boot_id": boot, "volumes": vols,
        }))
        .unwrap()
    }

    fn this_boot() -> String {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .to_string()
    }

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

    #[test]
    fn an_unreadable_row_is_reported_kept_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        s.update("good", Some(rec("i", 1)), false).unwrap();
        drop(s);
        raw(dir.path())
            .execute(
                "INSERT INTO volumes (name, record) VALUES ('bad', '{\"options\":7}')",
                [],
            )
            .unwrap();
        let (s2, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems[0].contains("\"bad\""), "{report:?}");
        assert_eq!(names(&s2), vec!["good"]);
        drop(s2);
        let n: i64 = raw(dir.path())
            .query_row("SELECT count(*) FROM volumes WHERE name = 'bad'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "the unreadable row was dropped");
    }

    /// Many volumes, checkpointed into the database file (so that damage to it hits them).
    fn many(dir: &Path, n: usize) -> BTreeMap<String, VolumeRecord> {
        let (s, _) = Store::open(dir).unwrap();
        for i in 0..n {
            s.update(
                &format!("vol-{i:04}"),
                Some(rec(&format!("id{i}"), 1)),
                false,
            )
            .unwrap();
        }
        let all = s.records();
        drop(s);
        raw(dir)
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        all
    }

    #[test]
    fn a_damaged_page_loses_only_its_rows_and_the_damaged_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let all = many(dir.path(), 400);
        let db = dir.path().join(DB_FILE);
        let mut bytes = fs::read(&db).unwrap();
        let pages = bytes.len() / 4096;
        assert!(pages > 8, "only {pages} pages");
        // Garbage over one page in the middle of the table.
        let at = (pages / 2) * 4096;
        for b in &mut bytes[at..at + 4096] {
            *b = 0xa5;
        }
        fs::write(&db, &bytes).unwrap();
        let (s, report) = Store::open(dir.path()).unwrap();
        assert!(!report.problems.is_empty());
        let got = s.records();
        // One page holds at most this many rows of the volumes table.
        let per_page = 4096
            / serde_json::to_string(&definition(&all["vol-0000"]))
                .unwrap()
                .len();
        assert!(
            got.len() + per_page >= all.len() && got.len() <= all.len(),
            "{} of {} records read back: {:?}",
            got.len(),
            all.len(),
            report.problems
        );
        // Definitions whole; holders as far as their own table could be read.
        assert!(got
            .iter()
            .all(|(k, v)| all.get(k).map(definition) == Some(definition(v))));
        let copies = files_named(dir.path(), "corrupt");
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(fs::read(&copies[0]).unwrap(), bytes);
        // The new database is whole and takes changes.
        s.update("new", Some(rec("i", 1)), true).unwrap();
        drop(s);
        let (s, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(s.records().len(), got.len() + 1);
    }

    #[test]
    fn a_file_that_is_no_database_starts_empty_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        many(dir.path(), 10);
        let garbage = b"\x00\xffthis is no database at all".repeat(200);
        fs::write(dir.path().join(DB_FILE), &garbage).unwrap();
        let (s, report) = Store::open(dir.path()).unwrap();
        assert!(!report.problems.is_empty());
        assert!(s.records().is_empty());
        let copies = files_named(dir.path(), "corrupt");
        assert_eq!(fs::read(&copies[0]).unwrap(), garbage);
        s.update("a", Some(rec("i", 1)), true).unwrap();
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
