//! The one accept loop of the daemon's two HTTP listeners, the plugin socket ([`crate::server`])
//! and the metrics port ([`crate::metrics`]): each connection takes a slot (more wait in the
//! listen backlog), must send its request headers within a deadline, and is served by hyper's
//! HTTP/1 in a task of its own. On shutdown the loop stops accepting and lets the connections
//! in flight finish, for at most a drain deadline. Each listener keeps its own [`Limits`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

/// A listener the loop can take connections from: the unix socket and TCP alike.
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection; errors are the listener's (out of file descriptors and the like).
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// What one listener allows; each keeps its own, so a flood of scrapes cannot take the
/// plugin socket's slots and the reverse.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Names the listener in log lines.
    pub name: &'static str,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this time (slow clients must not hold a
    /// connection slot forever).
    pub header_read_timeout: Duration,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
    /// After shutdown, how long connections in flight get to finish before the loop returns.
    pub drain: Duration,
}

/// Serve `listener` with `handle` answering each request, until `shutdown` completes; then stop
/// accepting (the listener is closed) and wait for connections in flight, at most
/// `limits.drain`.
pub async fn serve<L, H, Fut>(
    listener: L,
    limits: Limits,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let name = limits.name;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(limits.keep_alive);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.next() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let h = handle.clone();
        let svc = hyper::service::service_fn(move |req| {
            let answer = h(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        "no longer accepting; finishing calls in flight"
    );
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "calls still in flight after {} s; stopping anyway",
            limits.drain.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    fn limits(max_connections: usize, header_read_timeout: Duration) -> Limits {
        Limits {
            name: "test",
            max_connections,
            header_read_timeout,
            keep_alive: false,
            drain: LONG,
        }
    }

    async fn hello(_: Request<Incoming>) -> Response<Full<Bytes>> {
        Response::new(Full::new(Bytes::from_static(b"hello")))
    }

    /// Start the loop on a free port; the sender stops it.
    async fn start(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, limits, hello, async {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    /// Send one GET on `s` and read the reply to its end (the loop does not keep it alive).
    async fn get(s: &mut TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(LONG, s.read_to_end(&mut reply))
            .await
            .expect("no reply in time")
            .unwrap();
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[tokio::test]
    async fn a_request_is_answered_and_shutdown_closes_the_listener() {
        let (addr, stop, task) = start(limits(4, LONG)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let reply = get(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("hello"), "{reply}");
        stop.send(()).unwrap();
        tokio::time::timeout(LONG, task)
            .await
            .expect("the loop did not return after shutdown")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_waits_for_a_slot() {
        let (addr, _stop, _task) = start(limits(1, LONG)).await;
        // The first connection takes the only slot and sends nothing.
        let idle = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
        assert!(early.is_err(), "answered while the only slot was taken");
        drop(idle);
        let mut reply = Vec::new();
        tokio::time::timeout(LONG, second.read_to_end(&mut reply))
            .await
            .expect("not answered once the slot was free")
            .unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_header_deadline() {
        let deadline = Duration::from_millis(200);
        let (addr, _stop, _task) = start(limits(1, deadline)).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(LONG, silent.read_to_end(&mut buf))
            .await
            .expect("a silent client kept its connection")
            .ok();
        assert!(started.elapsed() >= deadline);
        // Its slot is free again: the next client is answered.
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut s).await.ends_with("hello"));
    }
}
