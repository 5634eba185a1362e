//! The protocol's calls as dockerd makes them: Activate, Capabilities, Create, Get, List, Remove,
//! and an Unmount by an ID that holds nothing.

use std::path::Path;

use serde_json::Value;

use crate::support::*;
use crate::{boolish, wait_unmounted};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn activate_capabilities_create_get_list_remove() {
    let Some((s3, d)) = setup("activate_capabilities_create_get_list_remove") else {
        return;
    };
    let (st, v) = d.activate();
    assert_eq!(st, 200, "Plugin.Activate: {v}");
    assert!(
        v.get("Implements")
            .and_then(Value::as_array)
            .map(|a| a.iter().any(|x| x == "VolumeDriver"))
            .unwrap_or(false),
        "Plugin.Activate does not implement VolumeDriver: {v}"
    );
    let (st, v) = d.capabilities();
    assert_eq!(st, 200);
    assert_eq!(
        v.pointer("/Capabilities/Scope").and_then(Value::as_str),
        Some("local"),
        "Capabilities: {v}"
    );

    let b = new_bucket(s3, "basic");
    let vol = unique_name("basic-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let g = d.get(&vol).unwrap();
    assert_eq!(
        g.get("Name").and_then(Value::as_str),
        Some(vol.as_str()),
        "Get: {g}"
    );
    if let Some(mp) = g.get("Mountpoint").and_then(Value::as_str) {
        assert!(
            mp.is_empty() || Path::new(mp) == d.mountpoint_of(&vol),
            "Get Mountpoint {mp}"
        );
    }
    if let Some(c) = g.get("CreatedAt") {
        let c = c.as_str().unwrap_or_default();
        // Docker decodes it as a Go time: RFC 3339, never an empty string.
        assert!(
            c.len() >= 20 && c.as_bytes()[4] == b'-' && c.as_bytes()[10] == b'T',
            "CreatedAt is not RFC 3339: {c:?}"
        );
    }
    let st = g.get("Status").cloned().unwrap_or(Value::Null);
    assert_eq!(
        st.get("bucket").and_then(Value::as_str),
        Some(b.as_str()),
        "Status: {st}"
    );
    assert_eq!(
        st.get("backend").and_then(Value::as_str),
        Some("default"),
        "Status: {st}"
    );
    assert!(
        st.get("prefix").is_none(),
        "Status shows a prefix that was not set: {st}"
    );
    assert_eq!(boolish(st.get("ro")), Some(false), "Status ro: {st}");
    assert!(!mounted(&st));
    assert_eq!(holders(&st), 0);
    assert_eq!(health(&st), "not mounted");
    assert!(d.list_names().contains(&vol));
    // Nothing is mounted until a container needs it.
    assert!(
        d.mounts().is_empty() && d.s3fs_pids().is_empty(),
        "Create mounted something"
    );

    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    assert_eq!(d.path(&vol).unwrap(), mp, "Path of a mounted volume");
    let st = status(&d, &vol);
    assert!(mounted(&st), "{st}");
    assert_eq!(holders(&st), 1, "{st}");
    assert_eq!(health(&st), "ok", "{st}");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);

    assert!(
        d.get("no-such-volume-here").is_err(),
        "Get of an unknown volume succeeded"
    );
    d.remove(&vol).unwrap();
    assert!(
        !d.list_names().contains(&vol),
        "removed volume still listed"
    );
    assert!(d.get(&vol).is_err(), "Get of a removed volume succeeded");
    // Remove never deletes the bucket.
    assert!(
        s3.s3().bucket_exists(&b).unwrap(),
        "Remove deleted the bucket"
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn unmount_of_an_unknown_id_succeeds() {
    let Some((s3, d)) = setup("unmount_of_an_unknown_id_succeeds") else {
        return;
    };
    let b = new_bucket(s3, "unknownid");
    let vol = unique_name("unknownid-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    d.unmount(&vol, &new_id())
        .expect("Unmount of an unknown ID on an unmounted volume failed");
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    d.unmount(&vol, &new_id())
        .expect("Unmount of an unknown ID on a mounted volume failed");
    assert!(
        is_mountpoint(&mp),
        "Unmount of an unknown ID unmounted the volume"
    );
    let st = status(&d, &vol);
    assert!(mounted(&st) && holders(&st) == 1, "{st}");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}
