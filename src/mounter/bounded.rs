//! Every system call on a FUSE path goes through here: off the async threads, with a deadline,
//! on a pool of its own with a fixed number of threads.
//!
//! A FUSE call blocks for as long as its s3fs takes to answer, and a stopped or wedged s3fs
//! never answers. Run on tokio's threads, one such call would stall every other volume, the
//! health loop and shutdown; so each runs on this pool and the caller stops waiting at its
//! deadline. The thread itself stays blocked until the kernel lets go (FUSE calls cannot be
//! cancelled from user space). The pool never grows past [`THREADS`], whatever is stuck, and
//! tokio's own blocking pool (which grows to 512) is never used for a FUSE call; callers keep
//! the number of calls stuck on one s3fs small (one probe in flight per s3fs, see
//! `s3fs::Liveness`), so a wedged s3fs holds one thread, not one per round.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

/// The most threads the pool runs at once. A thread blocked in FUSE costs little (its stack is
/// mostly untouched), and a store that stalls can hold one per s3fs of it (a probe) plus one
/// per Mount whose prefix lookup waits on it: too few threads, and Mounts of buckets on other
/// stores would queue behind them.
pub const THREADS: usize = 64;
/// An idle thread ends after this long, so a burst leaves no threads behind.
const IDLE: Duration = Duration::from_secs(10);

/// Why a bounded call gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("no answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("the call panicked")]
    Panicked,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

/// The pool: a queue of jobs and up to [`THREADS`] threads that take them.
struct Pool {
    q: Mutex<Queue>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        q: Mutex::new(Queue::default()),
        ready: Condvar::new(),
    })
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(&'static self, job: Job) {
        let mut q = self.lock();
        q.jobs.push_back(job);
        if q.idle > 0 {
            self.ready.notify_one();
        } else if q.threads < THREADS {
            let spawned = std::thread::Builder::new()
                .name("bai-s3-fuse".into())
                .spawn(move || self.work());
            if spawned.is_ok() {
                q.threads += 1;
            }
        }
        // Else every thread is busy: the job waits its turn, and its caller's deadline
        // answers for it meanwhile.
    }

    fn work(&self) {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                job();
                q = self.lock();
                continue;
            }
            q.idle += 1;
            let (g, waited) = self
                .ready
                .wait_timeout(q, IDLE)
                .unwrap_or_else(|e| e.into_inner());
            q = g;
            q.idle -= 1;
            if waited.timed_out() && q.jobs.is_empty() {
                q.threads -= 1;
                return;
            }
        }
    }
}

/// Start `f` on the pool; the receiver gets its result (a closed channel: it panicked).
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    pool().submit(Box::new(move || {
        // A panic stays in this job: the thread goes on with the next.
        if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(v);
        }
    }));
    rx
}

/// Run `f` on the pool and wait at most `limit` for it.
pub async fn run<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Unanswered> {
    match tokio::time::timeout(limit, spawn(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Unanswered::Panicked),
        Err(_) => Err(Unanswered::TimedOut(limit)),
    }
}

/// The pool's threads now (for tests).
#[cfg(test)]
pub fn threads() -> usize {
    pool().lock().threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_hangs_is_given_up_at_its_deadline() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let r = run(Duration::from_millis(50), move || rx.recv().is_ok()).await;
        assert_eq!(r, Err(Unanswered::TimedOut(Duration::from_millis(50))));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(tx);
        assert_eq!(run(Duration::from_secs(5), || 7).await, Ok(7));
        assert_eq!(
            run(Duration::from_secs(5), || -> u8 { panic!("boom") }).await,
            Err(Unanswered::Panicked)
        );
    }

    #[tokio::test]
    async fn hanging_calls_never_grow_the_pool_past_its_size() {
        let gate = std::sync::Arc::new((Mutex::new(false), Condvar::new()));
        for _ in 0..THREADS * 3 {
            let g = gate.clone();
            let r = run(Duration::from_millis(1), move || {
                let (m, c) = &*g;
                let mut open = m.lock().unwrap();
                while !*open {
                    open = c.wait(open).unwrap();
                }
            })
            .await;
            assert!(r.is_err());
            assert!(threads() <= THREADS, "{} threads", threads());
        }
        let (m, c) = &*gate;
        *m.lock().unwrap() = true;
        c.notify_all();
        // Once the hangs end, the queued calls run and new ones are answered.
        assert_eq!(run(Duration::from_secs(10), || 5).await, Ok(5));
    }
}
