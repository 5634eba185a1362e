//! The daemon's store, read as an operator would (a connection of its own).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The store's database in a state folder.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(bai_s3::layout::DB_FILE)
}

/// Every row of the store (volume name → the record's JSON text) plus its `boot_id`, read with
/// a read-only connection of its own; None when there is no readable store.
pub fn store_rows(
    state_dir: &Path,
) -> Option<(std::collections::BTreeMap<String, String>, String)> {
    use rusqlite::{Connection, OpenFlags};
    let c = Connection::open_with_flags(store_path(state_dir), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    let mut st = c.prepare("SELECT name, record FROM volumes").ok()?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let mut rows: std::collections::BTreeMap<String, String> = rows;
    // Holders have a table of their own: appended to their volume's row, as JSON.
    let mut st = c
        .prepare("SELECT volume, id, count FROM holders ORDER BY volume, id")
        .ok()?;
    let holders: Vec<(String, String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let mut per: std::collections::BTreeMap<String, serde_json::Map<String, Value>> =
        Default::default();
    for (v, id, n) in holders {
        per.entry(v).or_default().insert(id, json!(n));
    }
    for (v, row) in rows.iter_mut() {
        let h = per.remove(v).unwrap_or_default();
        row.push_str(&format!("\t{}", Value::Object(h)));
    }
    let boot: String = c
        .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
            r.get(0)
        })
        .unwrap_or_default();
    Some((rows, boot))
}

/// The store's records (each row decoded), or panics.
pub fn store_records(
    state_dir: &Path,
) -> std::collections::BTreeMap<String, bai_s3::state::VolumeRecord> {
    let (rows, _) = store_rows(state_dir)
        .unwrap_or_else(|| panic!("no readable store in {}", state_dir.display()));
    rows.into_iter()
        .map(|(k, v)| {
            let (record, holders) = v.split_once('\t').expect("record and holders");
            let mut r: bai_s3::state::VolumeRecord =
                serde_json::from_str(record).unwrap_or_else(|e| panic!("row {k}: {e}: {record}"));
            r.holders = serde_json::from_str(holders).unwrap();
            (k, r)
        })
        .collect()
}

/// The state folder's store as the JSON file `volumes.json` of bai-s3 before the database, byte
/// for byte as its `Store::write` made it (`{"version":1,"boot_id":..,"volumes":{..}}`).
pub fn legacy_state_file(state_dir: &Path) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct DiskRef<'a> {
        version: u32,
        boot_id: &'a str,
        volumes: &'a std::collections::BTreeMap<String, bai_s3::state::VolumeRecord>,
    }
    let (_, boot) = store_rows(state_dir).expect("a readable store");
    let volumes = store_records(state_dir);
    serde_json::to_vec(&DiskRef {
        version: 1,
        boot_id: &boot,
        volumes: &volumes,
    })
    .unwrap()
}

/// Replace a stopped daemon's store by the `volumes.json` an earlier bai-s3 would have left in
/// the folder; returns the file's bytes.
pub fn downgrade_state_folder(state_dir: &Path) -> Vec<u8> {
    let bytes = legacy_state_file(state_dir);
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", store_path(state_dir).display()));
        let _ = fs::remove_file(f);
    }
    let path = state_dir.join("volumes.json");
    fs::write(&path, &bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    bytes
}
