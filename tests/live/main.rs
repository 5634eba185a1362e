//! A running container's mount is never taken away by bai-s3. Each test keeps a writer with a
//! file open in the volume through the event (as a container's job would), and checks that its
//! writes after the event succeed and that what it fsync'd is in the bucket. One module a
//! scenario:
//!
//! - `broken_backends_restart`: a restart while the backends file is broken;
//! - `stopped_s3fs`: a slow s3fs, a wedged s3fs, many health rounds of a stopped one;
//! - `stalled_store`: a Mount that times out on a stalled store;
//! - `impostors`: processes of another uid dressed up as an s3fs;
//! - `unmount_meets_mount`: a last Unmount meeting a first Mount.
//!
//! Every test talks to the real `bai-s3 serve` over its socket, with real s3fs and SeaweedFS.
#[path = "../support/mod.rs"]
mod support;

mod broken_backends_restart;
mod impostors;
mod stalled_store;
mod stopped_s3fs;
mod unmount_meets_mount;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::*;

/// A process-like writer: one file held open in the volume, a line written and fsync'd every
/// 50 ms, every error kept.
struct Writer {
    lines: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let mut f = fs::File::create(path)
            .unwrap_or_else(|e| panic!("writer: create {}: {e}", path.display()));
        let lines = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, e, s) = (lines.clone(), errors.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let n = l.load(Ordering::Acquire);
                match f
                    .write_all(format!("line {n}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                {
                    Ok(()) => {
                        l.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(err) => e.lock().unwrap().push(format!("line {n}: {err}")),
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Writer {
            lines,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `more` further lines were written and fsync'd.
    fn wait_more(&self, more: usize, what: &str) {
        let want = self.lines.load(Ordering::Acquire) + more;
        let got = poll(Duration::from_secs(30), || {
            (self.lines.load(Ordering::Acquire) >= want).then_some(())
        });
        assert!(
            got.is_some(),
            "{what}: the writer got no further ({} lines; errors: {:?})",
            self.lines.load(Ordering::Acquire),
            self.errors.lock().unwrap()
        );
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "{what}: the writer saw errors: {errors:?}"
        );
    }

    /// Stops the writer, unmounts its volume for `id`, and checks that every line it wrote
    /// reached `key` in `bucket`.
    fn finish_into(
        self,
        d: &Daemon,
        (vol, id): (&str, &str),
        s3: &S3Server,
        (bucket, key): (&str, &str),
    ) {
        let n = self.finish();
        unmount_ok(d, vol, id);
        assert_lines_in_bucket(s3, bucket, key, n);
    }

    /// Stops, closes the file, and returns how many lines were written and fsync'd.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "the writer saw errors: {errors:?}");
        self.lines.load(Ordering::Acquire)
    }
}

/// Every one of the writer's `n` lines is in the object.
fn assert_lines_in_bucket(s3: &S3Server, bucket: &str, key: &str, n: usize) {
    let body = poll(Duration::from_secs(20), || {
        let b = s3.s3().get(bucket, key).ok().flatten()?;
        (String::from_utf8_lossy(&b).lines().count() >= n).then_some(b)
    })
    .unwrap_or_else(|| panic!("s3://{bucket}/{key} does not hold the writer's {n} lines"));
    let text = String::from_utf8_lossy(&body);
    for i in 0..n {
        assert!(
            text.contains(&format!("line {i}\n")),
            "line {i} missing from s3://{bucket}/{key}"
        );
    }
}

fn wait_adopted(d: &Daemon, vol: &str, holders_want: u64) -> serde_json::Value {
    poll(Duration::from_secs(20), || {
        let st = d.status(vol).ok()?;
        (mounted(&st) && holders(&st) == holders_want).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "{vol} was not adopted after the restart: {:?}\n{}",
            d.status(vol),
            d.logs_tail(60)
        )
    })
}

/// The daemon's s3fs processes: root's, among those that name its mount root.
fn root_s3fs(d: &Daemon) -> Vec<i32> {
    d.s3fs_pids()
        .into_iter()
        .filter(|p| uid_of(*p) == Some((0, 0)))
        .collect()
}
