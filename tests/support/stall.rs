//! A TCP proxy between s3fs and SeaweedFS that stops forwarding a connection once its request
//! bytes contain a chosen word, while stalling is on: a store that is slow on demand, for
//! exactly the requests a test names (a prefix's lookups), which makes "slow store" and
//! "timed-out Mount" deterministic. Stalled connections stay open and silent, as a stuck
//! server's would, until the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct StallProxy {
    /// `http://127.0.0.1:PORT`, to give a daemon as a backend's endpoint.
    pub endpoint: String,
    stalling: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Every connection's sockets, so that drop ends them all.
    conns: Arc<Mutex<Vec<TcpStream>>>,
    port: u16,
}

impl StallProxy {
    /// Forward to `upstream` (`host:port`); requests containing `word` stall while
    /// [`StallProxy::stall`] is on.
    pub fn start(upstream: &str, word: &str) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().unwrap().port();
        let stalling = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (st, sp, cs, up, w) = (
            stalling.clone(),
            stop.clone(),
            conns.clone(),
            upstream.to_string(),
            word.as_bytes().to_vec(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if sp.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut c = cs.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (st, w) = (st.clone(), w.clone());
                thread::spawn(move || {
                    let mut seen: Vec<u8> = Vec::new();
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        // Keep only what a word split across reads needs.
                        if seen.len() > 64 * 1024 {
                            seen.drain(..seen.len() - 1024);
                        }
                        if st.load(Ordering::Acquire) && seen.windows(w.len()).any(|x| x == w) {
                            // Hold the connection open and say nothing, as a stuck store does.
                            let mut sink = [0u8; 4096];
                            while matches!(c_in.read(&mut sink), Ok(n) if n > 0) {}
                            break;
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        StallProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            stalling,
            stop,
            conns,
            port,
        }
    }

    /// Turn stalling on or off (for requests from now on).
    pub fn stall(&self, on: bool) {
        self.stalling.store(on, Ordering::Release);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
