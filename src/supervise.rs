//! `bai-s3 supervise`: keep `bai-s3 serve` running. Inside the managed plugin a crash of the
//! server must not end the plugin's container, because that would take every s3fs mount (and
//! the containers' data) with it. The supervisor restarts the server, which re-adopts the live
//! mounts; tini, as PID 1, reaps the s3fs processes orphaned by the crash.

use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

/// Run the server until it exits after a signal we forwarded; restart it after a crash.
pub async fn run(forward_args: Vec<std::ffi::OsString>) -> std::io::Result<i32> {
    let exe = std::env::current_exe()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let mut child = Command::new(&exe)
            .arg("serve")
            .args(&forward_args)
            .spawn()?;
        let pid = child.id();
        let stop = tokio::select! {
            status = child.wait() => {
                let status = status?;
                tracing::error!(%status, "bai-s3 serve exited; starting it again");
                None
            }
            _ = term.recv() => Some(nix::sys::signal::Signal::SIGTERM),
            _ = int.recv() => Some(nix::sys::signal::Signal::SIGINT),
        };
        if let Some(sig) = stop {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
            }
            let status = child.wait().await?;
            return Ok(status.code().unwrap_or(0));
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
