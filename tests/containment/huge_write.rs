//! What a container writes: a file bigger than the state folder's disk never fills it.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

fn free_mib(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_available() * st.fragment_size() / (1024 * 1024)
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_huge_write_never_fills_the_state_folders_disk() {
    if !prereqs("a_huge_write_never_fills_the_state_folders_disk") {
        return;
    }
    // In a test folder: the mount-table checks of the parallel tests leave it out.
    let t = test_dir();
    let state = t.path().join("small-state");
    let _tmpfs = mount_guarded(
        &state,
        &["-t", "tmpfs", "-o", "size=80m,mode=0700", "tmpfs"],
    );
    const RESERVE: u64 = 40;
    let s3 = shared_s3();
    let sd = state.to_str().unwrap().to_string();
    let d = Daemon::start_with(
        &[s3.backend("default")],
        &["--state-dir", &sd, "--min-disk-free", &RESERVE.to_string()],
    );
    let b = new_bucket(s3, "diskfull");
    let v = unique_name("diskfull");
    create_ok(
        &d,
        &v,
        &[
            ("bucket", &b),
            ("multipart-size", "5"),
            ("parallel-count", "1"),
        ],
    );
    let id = new_id();
    let mp = mount_ok(&d, &v, &id);
    let pid = d.s3fs_pids()[0];
    let args = cmdline(pid).join(" ");
    assert!(
        args.contains(&format!("tmpdir={sd}/tmp/"))
            && args.contains(&format!("ensure_diskfree={RESERVE}")),
        "{args}"
    );

    // Watch the state disk and where s3fs keeps its staging files while 120 MiB are written.
    let stop = Arc::new(AtomicBool::new(false));
    let min_free = Arc::new(AtomicU64::new(u64::MAX));
    let staged_in_state = Arc::new(AtomicBool::new(false));
    let staged_elsewhere = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sampler = {
        let (stop, min_free, inside, elsewhere) = (
            stop.clone(),
            min_free.clone(),
            staged_in_state.clone(),
            staged_elsewhere.clone(),
        );
        let state = state.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                min_free.fetch_min(free_mib(&state), Ordering::AcqRel);
                for e in fs::read_dir(format!("/proc/{pid}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(l) = fs::read_link(e.path()) {
                        let l = l.display().to_string();
                        if l.contains("s3fstmp") {
                            if l.starts_with(&format!("{}/tmp/", state.display())) {
                                inside.store(true, Ordering::Release);
                            } else {
                                elsewhere.lock().unwrap().push(l);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let chunk = vec![7u8; 1024 * 1024];
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(mp.join("huge"))?;
        for _ in 0..120 {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    stop.store(true, Ordering::Release);
    sampler.join().unwrap();
    let min = min_free.load(Ordering::Acquire);
    let log = fs::read_dir(state.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    say(&format!(
        "huge write: {result:?}; least free on the state disk {min} MiB; s3fs log:\n{log}"
    ));
    // The write cannot fit above the reserve, so it must fail: ENOSPC, or EIO where s3fs
    // 1.90 tries to stream the rest out as a multipart upload and fails ("Multipart Upload
    // has not started yet").
    let errno = result.as_ref().err().and_then(|e| e.raw_os_error());
    assert!(
        errno == Some(libc_enospc()) || errno == Some(nix::errno::Errno::EIO as i32),
        "a write of 120 MiB on an 80 MiB disk with a {RESERVE} MiB reserve: {result:?}"
    );
    // s3fs holds back at most one part (multipart-size, 5 MiB here) and one write call below
    // the reserve; the disk is never filled.
    assert!(
        min + 5 + 1 >= RESERVE,
        "the state disk fell to {min} MiB free (reserve {RESERVE})"
    );
    assert!(
        staged_in_state.load(Ordering::Acquire),
        "no staging file seen under the state folder"
    );
    let elsewhere = staged_elsewhere.lock().unwrap().clone();
    assert!(
        elsewhere.is_empty(),
        "staging files outside the state folder: {elsewhere:?}"
    );
    let _ = fs::remove_file(mp.join("huge"));
    unmount_ok(&d, &v, &id);
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}
