//! Every system call on a FUSE path goes through here: off the async threads, with a deadline.
//!
//! A FUSE call blocks for as long as its s3fs takes to answer, and a stopped or wedged s3fs
//! never answers. Run on tokio's threads, one such call would stall every other volume, the
//! health loop and shutdown; so each runs on the blocking pool and the caller stops waiting at
//! its deadline. The thread itself stays blocked until the kernel lets go (FUSE calls cannot be
//! cancelled from user space), which costs one pool thread per wedged call and nothing else.

use std::time::Duration;

/// Why a bounded call gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("no answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("the call panicked")]
    Panicked,
}

/// Run `f` on the blocking pool and wait at most `limit` for it.
pub async fn run<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Unanswered> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Unanswered::Panicked),
        Err(_) => Err(Unanswered::TimedOut(limit)),
    }
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
}
