//! The SQLite side of the store: schema, the reads at open, and the writes of one change.
//!
//! Table `volumes` holds each volume's definition (its record without holders) as JSON text;
//! table `holders` one row per (volume, ID) with its count; table `meta` the boot id and the
//! name an imported `volumes.json` was kept under.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use super::{StoreError, VolumeRecord};

/// `PRAGMA user_version` of the schema this code writes.
const SCHEMA: i64 = 1;

const UPSERT: &str = "INSERT INTO volumes (name, record) VALUES (?1, ?2) \
                      ON CONFLICT (name) DO UPDATE SET record = excluded.record";
const DELETE: &str = "DELETE FROM volumes WHERE name = ?1";
const UPSERT_HOLDER: &str = "INSERT INTO holders (volume, id, count) VALUES (?1, ?2, ?3) \
                             ON CONFLICT (volume, id) DO UPDATE SET count = excluded.count";
const DELETE_HOLDER: &str = "DELETE FROM holders WHERE volume = ?1 AND id = ?2";
const DELETE_HOLDERS: &str = "DELETE FROM holders WHERE volume = ?1";

/// The `meta` key of the boot id the database was last opened in.
pub(super) const BOOT_ID: &str = "boot_id";
/// The `meta` key of the name an imported `volumes.json` was kept under.
pub(super) const IMPORTED: &str = "imported";

/// Why a database is unusable as it is: kept aside and salvaged, never served or deleted.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    /// SQLite says the file is no database or its pages are corrupt.
    #[error(transparent)]
    Sqlite(rusqlite::Error),
    /// `PRAGMA quick_check` found a fault; the text is SQLite's.
    #[error("integrity check failed: {0}")]
    Check(String),
}

/// Why an existing database could not be opened.
pub(super) enum LoadError {
    /// It is damaged (not a database, corrupt pages, unreadable schema): kept aside and
    /// salvaged.
    Damaged(Damage),
    /// Anything else (permissions, a lock held by someone else, I/O): the daemon does not
    /// start, and the files are left as they are.
    Failed(StoreError),
}

impl From<rusqlite::Error> for LoadError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, DatabaseCorrupt | NotADatabase) =>
            {
                LoadError::Damaged(Damage::Sqlite(e))
            }
            _ => LoadError::Failed(StoreError::Sqlite(e)),
        }
    }
}

impl From<io::Error> for LoadError {
    fn from(e: io::Error) -> Self {
        LoadError::Failed(StoreError::Io(e))
    }
}

/// What [`load`] read from a database that opened.
pub(super) struct Loaded {
    pub conn: Connection,
    pub records: BTreeMap<String, VolumeRecord>,
    /// The boot the database was last opened in (empty when it never was).
    pub boot_id: String,
    /// Rows that could not be read (they stay in the database).
    pub problems: Vec<String>,
}

fn connect(path: &Path) -> Result<Connection, LoadError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LoadError::Failed(StoreError::NotWal {
            path: path.to_path_buf(),
            mode,
        }));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Open the database (creating it 0600 when missing), check it, and read every record.
pub(super) fn load(path: &Path) -> Result<Loaded, LoadError> {
    // SQLite gives its -wal and -shm files the database file's mode: make it 0600 first.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|f| f.set_permissions(fs::Permissions::from_mode(0o600)))?;
    let conn = connect(path)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(LoadError::Damaged(Damage::Check(check)));
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
    let boot_id = get_meta(&conn, BOOT_ID)?.unwrap_or_default();
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

/// The value of `key` in `meta`, if set.
pub(super) fn get_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Set `key` in `meta` (inside the caller's transaction).
pub(super) fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        [key, value],
    )
    .map(|_| ())
}

/// Set the commit mode: `FULL` fsyncs the log before a commit returns, `NORMAL` does not.
pub(super) fn set_durable(conn: &Connection, durable: bool) -> rusqlite::Result<()> {
    let mode = if durable { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", mode)
}

/// A record without its holders: what the `volumes` table keeps (holders have their own table,
/// so that a Mount writes one small row, not the volume's whole record).
pub(super) fn definition(r: &VolumeRecord) -> VolumeRecord {
    VolumeRecord {
        holders: BTreeMap::new(),
        ..r.clone()
    }
}

/// Write the change from `prev` (what the database holds for `name`) to `new`: the definition
/// only when it changed, holder rows only for the IDs whose counts changed. Inside the caller's
/// transaction.
pub(super) fn write_record(
    conn: &Connection,
    name: &str,
    prev: Option<&VolumeRecord>,
    new: Option<&VolumeRecord>,
) -> Result<(), StoreError> {
    let exec = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map(|_| ())
    };
    let Some(r) = new else {
        exec(DELETE, &[&name])?;
        return Ok(exec(DELETE_HOLDERS, &[&name])?);
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
pub(super) fn read_holders(
    conn: &Connection,
) -> rusqlite::Result<BTreeMap<String, BTreeMap<String, u64>>> {
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

/// The database's `-wal` or `-shm` file (`suffix` empty: the database itself).
pub(super) fn companion(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{names, raw, rec};
    use super::super::Store;

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
}
