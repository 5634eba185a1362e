//! A crowd of clients at once: every one is answered.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn three_hundred_simultaneous_clients_are_all_answered() {
    let Some((s3, d)) = setup("three_hundred_simultaneous_clients_are_all_answered") else {
        return;
    };
    let b = new_bucket(s3, "crowd");
    let vol = unique_name("crowd-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    const LISTERS: usize = 300;
    const MOUNTERS: usize = 6;
    let barrier = Arc::new(Barrier::new(LISTERS + MOUNTERS));
    let socket = Arc::new(d.socket.clone());
    let mut threads = Vec::new();
    // No retry on connect: the daemon listens with the kernel's full backlog (somaxconn) and
    // serves 512 connections at once, so 306 simultaneous connects must all succeed.
    for i in 0..LISTERS {
        let (barrier, socket, vol) = (barrier.clone(), socket.clone(), vol.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            barrier.wait();
            let (st, v) = plugin_call(&socket, "VolumeDriver.List", "{}")
                .map_err(|e| format!("List #{i}: {e}"))?;
            let v = result_of(st, &v).map_err(|e| format!("List #{i}: {e}"))?;
            let listed = v
                .get("Volumes")
                .and_then(Value::as_array)
                .map(|a| a.iter().any(|x| x.get("Name") == Some(&json!(vol))))
                .unwrap_or(false);
            if listed {
                Ok(())
            } else {
                Err(format!("List #{i} does not list {vol}: {v}"))
            }
        }));
    }
    for i in 0..MOUNTERS {
        let (barrier, socket, vol) = (barrier.clone(), socket.clone(), vol.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let id = random_hex(32);
            barrier.wait();
            let body = json!({"Name": vol, "ID": id}).to_string();
            let (st, v) = plugin_call(&socket, "VolumeDriver.Mount", &body)
                .map_err(|e| format!("Mount #{i}: {e}"))?;
            let v = result_of(st, &v).map_err(|e| format!("Mount #{i}: {e}"))?;
            let mp = v.get("Mountpoint").and_then(Value::as_str).unwrap_or("");
            if !is_mountpoint(Path::new(mp)) {
                return Err(format!("Mount #{i} answered {v} but nothing is mounted"));
            }
            let f = Path::new(mp).join(format!("crowd-{i}"));
            fs::write(&f, b"x").map_err(|e| format!("write {}: {e}", f.display()))?;
            let (st, v) = plugin_call(&socket, "VolumeDriver.Unmount", &body)
                .map_err(|e| format!("Unmount #{i}: {e}"))?;
            result_of(st, &v).map_err(|e| format!("Unmount #{i}: {e}"))?;
            Ok(())
        }));
    }
    let started = Instant::now();
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    say(&format!(
        "{} simultaneous clients answered in {:?}",
        LISTERS + MOUNTERS,
        started.elapsed()
    ));
    assert!(
        errors.is_empty(),
        "{} of {} clients failed:\n{}\n{}",
        errors.len(),
        LISTERS + MOUNTERS,
        errors
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        d.logs_tail(30)
    );
    let st = d.status(&vol).unwrap();
    assert_eq!(
        st.get("holders"),
        Some(&json!(0)),
        "after all Unmounts: {st}"
    );
    wait_nothing_mounted(
        &d,
        "after every Mount was unmounted",
        Duration::from_secs(15),
    );
    let keys = s3.s3().list(&b, Some("crowd-")).unwrap();
    assert_eq!(
        keys.len(),
        MOUNTERS,
        "objects written by the mounters: {keys:?}"
    );
    // And the daemon keeps serving.
    assert_eq!(d.list_names(), vec![vol.clone()]);
}
