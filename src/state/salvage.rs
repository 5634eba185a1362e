//! A damaged database: its files are copied aside byte for byte (never deleted), every record
//! that can still be read is carried into a fresh database, and what was lost is reported.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use rusqlite::Connection;

use super::db::{self, companion, Damage, LoadError, Loaded};
use super::{free_name, now_secs, StoreError, VolumeRecord};
use crate::layout::DB_FILE;

/// Copy the damaged database at `db` aside, read what can be read, and start a fresh one with
/// it. The fresh database's `problems` say what the damage was and what it cost.
pub(super) fn recover(dir: &Path, db: &Path, damage: &Damage) -> Result<Loaded, StoreError> {
    let copy = keep_aside(dir, db)?;
    let mut problems = vec![format!("the database could not be used: {damage}")];
    let (records, boot_id, more) = salvage(db);
    problems.extend(more);
    for p in &problems {
        tracing::error!(file = %db.display(), copy = %copy.display(), problem = %p, "state damaged; serving what could be read");
    }
    for suffix in ["", "-wal", "-shm"] {
        match fs::remove_file(companion(db, suffix)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let fresh = db::load(db).map_err(|e| match e {
        LoadError::Failed(e) => e,
        LoadError::Damaged(d) => StoreError::Damaged(d),
    })?;
    db::set_durable(&fresh.conn, true)?;
    let tx = fresh.conn.unchecked_transaction()?;
    for (name, r) in &records {
        db::write_record(&tx, name, None, Some(r))?;
    }
    tx.commit()?;
    File::open(dir)?.sync_all()?;
    Ok(Loaded {
        conn: fresh.conn,
        records,
        boot_id,
        problems,
    })
}

/// Byte copies of the database and its log, taken before SQLite touches the files again; the
/// log and shared-memory files under the copy's name so that `sqlite3 <copy>` reads them
/// together. Returns the copy's path.
fn keep_aside(dir: &Path, db: &Path) -> io::Result<std::path::PathBuf> {
    let base = format!("{DB_FILE}.corrupt-{}", now_secs());
    let copy = free_name(dir, &base);
    let copy_name = copy
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(base);
    fs::copy(db, &copy)?;
    for suffix in ["-wal", "-shm"] {
        let f = companion(db, suffix);
        if f.exists() {
            fs::copy(&f, dir.join(format!("{copy_name}{suffix}")))?;
        }
    }
    Ok(copy)
}

/// Every record that can be read from a damaged database: a scan forward and one backward by
/// rowid, each up to the first page that fails, so that one bad page loses only its rows.
/// Returns the records, the boot id, and the problems.
fn salvage(db: &Path) -> (BTreeMap<String, VolumeRecord>, String, Vec<String>) {
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
    let boot = db::get_meta(&conn, db::BOOT_ID)
        .ok()
        .flatten()
        .unwrap_or_default();
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
    if let Ok(h) = db::read_holders(&conn) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;

    use super::super::testing::{files_named, raw, rec};
    use super::super::{db::definition, Store, VolumeRecord};
    use crate::layout::DB_FILE;

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
}
