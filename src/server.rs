//! HTTP serving of the plugin protocol on a unix socket: routing, request limits, one log line
//! per call, and the single place where driver errors become `{"Err": ...}`. Connections are
//! taken by the accept loop both listeners share ([`crate::accept`]).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixListener;

use crate::accept::Limits;
use crate::driver::{Driver, VolumeInfo};
use crate::error::Error;
use crate::mounter::Mounter;
use crate::protocol::*;

/// Largest request body accepted; Docker's requests are a few hundred bytes.
pub const MAX_BODY: usize = 1 << 20;
/// A client must send its request headers and body within this time (slow clients must not
/// hold a connection slot forever).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The plugin socket's connections: many at once (more wait in the listen backlog), kept alive
/// as dockerd keeps them, and a minute for calls in flight at shutdown.
const LIMITS: Limits = Limits {
    name: "plugin",
    max_connections: 512,
    header_read_timeout: READ_TIMEOUT,
    keep_alive: true,
    drain: Duration::from_secs(60),
};

/// Media type of replies, as other volume plugins answer.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

/// Bind the plugin socket: replace a stale socket file from an earlier run, refuse to steal
/// one that a live daemon answers on, and create it readable by root only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "another process answers on {}; is bai-s3 already running?",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(_) => {}
    }
    // The socket file takes its mode from the umask at bind(); narrow it for that one call so
    // there is no moment when others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serve until `shutdown` completes, then stop accepting and let calls in flight finish.
pub async fn serve<M: Mounter>(
    listener: UnixListener,
    driver: Arc<Driver<M>>,
    shutdown: impl Future<Output = ()>,
) {
    let list = Arc::new(ListCache::default());
    let handler = move |req| {
        let (d, l) = (driver.clone(), list.clone());
        async move { handle(d, &l, req).await }
    };
    crate::accept::serve(listener, LIMITS, handler, shutdown).await;
}

/// The last List reply's bytes and the driver's List generation they were built at: with
/// thousands of volumes, building and encoding List costs milliseconds, and Backend.AI lists
/// at every kernel start while the set rarely changes.
#[derive(Default)]
struct ListCache(std::sync::Mutex<Option<(u64, Bytes)>>);

impl ListCache {
    fn reply<M: Mounter>(&self, driver: &Driver<M>) -> Bytes {
        // Read before building: a change during the build bumps it, so the next List rebuilds.
        let generation = driver.list_generation();
        if let Some((g, body)) = &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            if *g == generation {
                return body.clone();
            }
        }
        let volumes = driver
            .list_entries()
            .into_iter()
            .map(|v| Volume {
                name: v.name,
                mountpoint: v.mountpoint,
                created_at: Some(v.created_at),
                status: None,
            })
            .collect();
        let body = encode(&ListReply {
            volumes,
            err: String::new(),
        });
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, body.clone()));
        body
    }
}

/// A protocol-level refusal (before the driver is reached).
struct Refusal(StatusCode, String);

fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    reply_bytes(status, encode(body))
}

fn encode<T: Serialize>(body: &T) -> Bytes {
    Bytes::from(
        serde_json::to_vec(body).unwrap_or_else(|_| {
            br#"{"Err":"internal error: reply could not be encoded"}"#.to_vec()
        }),
    )
}

fn reply_bytes(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", CONTENT_TYPE)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn decode<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("malformed request to {endpoint}: {e}"),
        )
    })
}

/// What one call was about, for its log line.
#[derive(Default)]
struct CallLog {
    volume: Option<String>,
    id: Option<String>,
}

async fn handle<M: Mounter>(
    driver: Arc<Driver<M>>,
    list: &ListCache,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let endpoint = req.uri().path().to_string();
    let mut log = CallLog::default();
    let result = route(&driver, list, req, &endpoint, &mut log).await;
    let micros = started.elapsed().as_micros() as u64;
    // `None` when the call succeeded; else what the caller was told.
    let (refusal, resp) = match result {
        Ok(resp) => (None, resp),
        Err(Refusal(status, msg)) => {
            let resp = reply(status, &ErrReply { err: msg.clone() });
            (Some(msg), resp)
        }
    };
    let vol = log.volume.as_deref().unwrap_or("-");
    let id = log.id.as_deref().unwrap_or("-");
    crate::metrics::record_call(&endpoint, refusal.is_none(), started.elapsed());
    match refusal {
        None => {
            tracing::info!(endpoint = %endpoint, volume = vol, id, outcome = "ok", micros, "call")
        }
        Some(outcome) => {
            tracing::warn!(endpoint = %endpoint, volume = vol, id, outcome = %outcome, micros, "call")
        }
    }
    resp
}

/// Driver errors become a 500 reply carrying `Err`, as Docker's own plugin helpers answer:
/// dockerd shows the `Err` text either way, but Podman reads only the status, and a refusal
/// answered with 200 would be a success to it (an empty Mountpoint bound into a container).
/// The outcome text goes to the log line.
fn driver_err(e: Error) -> Refusal {
    Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn route<M: Mounter>(
    driver: &Arc<Driver<M>>,
    list: &ListCache,
    req: Request<Incoming>,
    endpoint: &str,
    log: &mut CallLog,
) -> Result<Response<Full<Bytes>>, Refusal> {
    if req.method() != hyper::Method::POST {
        return Err(Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {endpoint}: the plugin protocol uses POST", req.method()),
        ));
    }
    let body = match tokio::time::timeout(
        READ_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => {
            return Err(Refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body to {endpoint} not received within {} s",
                    READ_TIMEOUT.as_secs()
                ),
            ))
        }
        Ok(Err(e)) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(if too_big {
                Refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request to {endpoint} is larger than {MAX_BODY} bytes"),
                )
            } else {
                Refusal(
                    StatusCode::BAD_REQUEST,
                    format!("request to {endpoint} could not be read: {e}"),
                )
            });
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let ok = StatusCode::OK;
    match endpoint {
        "/Plugin.Activate" => Ok(reply(
            ok,
            &ActivateReply {
                implements: vec!["VolumeDriver"],
            },
        )),
        "/VolumeDriver.Capabilities" => Ok(reply(
            ok,
            &CapabilitiesReply {
                capabilities: Capabilities { scope: "local" },
            },
        )),
        "/VolumeDriver.List" => Ok(reply_bytes(ok, list.reply(driver))),
        "/VolumeDriver.Create" => {
            call(endpoint, &body, log, |r: CreateRequest| {
                let d = driver.clone();
                detached(async move { d.create(&r.name, &r.opts.unwrap_or_default()).await })
            })
            .await
        }
        "/VolumeDriver.Remove" => {
            call(endpoint, &body, log, |r: NameRequest| {
                let d = driver.clone();
                detached(async move { d.remove(&r.name).await })
            })
            .await
        }
        // The driver runs a mount in a task of its own and drops the Mount of a caller that
        // went away, so Mount is not detached.
        "/VolumeDriver.Mount" => {
            call(endpoint, &body, log, |r: MountRequest| async move {
                let p = driver.mount(&r.name, &r.id).await?;
                Ok(MountpointReply::at(p.display().to_string()))
            })
            .await
        }
        "/VolumeDriver.Unmount" => {
            call(endpoint, &body, log, |r: MountRequest| {
                let d = driver.clone();
                detached(async move { d.unmount(&r.name, &r.id).await })
            })
            .await
        }
        "/VolumeDriver.Path" => {
            call(endpoint, &body, log, |r: NameRequest| async move {
                driver.path(&r.name).map(MountpointReply::at)
            })
            .await
        }
        "/VolumeDriver.Get" => {
            call(endpoint, &body, log, |r: NameRequest| async move {
                let v = driver.get(&r.name)?;
                Ok(GetReply {
                    volume: to_protocol(v),
                    err: String::new(),
                })
            })
            .await
        }
        _ => Err(Refusal(
            StatusCode::NOT_FOUND,
            format!(
                "unknown endpoint {endpoint}; this is a Docker volume plugin (VolumeDriver API)"
            ),
        )),
    }
}

/// One volume call: decode the request, note its volume and ID for the log line, run it, and
/// reply (a driver error becomes `{"Err": ...}` in [`driver_err`]). A call that only succeeds
/// or fails replies `{"Err": ""}`.
async fn call<R, T, Fut>(
    endpoint: &str,
    body: &[u8],
    log: &mut CallLog,
    run: impl FnOnce(R) -> Fut,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    R: DeserializeOwned + Subject,
    T: IntoReply,
    Fut: Future<Output = Result<T, Error>>,
{
    let r: R = decode(endpoint, body)?;
    log.volume = Some(r.volume().to_string());
    log.id = r.id().map(str::to_string);
    let out = run(r).await.map_err(driver_err)?;
    Ok(out.into_reply())
}

/// What a volume call answers with.
trait IntoReply {
    fn into_reply(self) -> Response<Full<Bytes>>;
}

impl IntoReply for () {
    fn into_reply(self) -> Response<Full<Bytes>> {
        reply(StatusCode::OK, &ErrReply::default())
    }
}

impl IntoReply for MountpointReply {
    fn into_reply(self) -> Response<Full<Bytes>> {
        reply(StatusCode::OK, &self)
    }
}

impl IntoReply for GetReply {
    fn into_reply(self) -> Response<Full<Bytes>> {
        reply(StatusCode::OK, &self)
    }
}

/// Run a state-changing driver call to its end even if the client hangs up meanwhile: a call
/// dropped half-way (s3fs started, holder not yet written) would leave the volume in a state
/// no caller knows about. A panic inside becomes an error reply, not a dropped connection.
async fn detached<T: Send + 'static>(
    call: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(call)
        .await
        .unwrap_or_else(|e| Err(Error::CallUnfinished(e)))
}

fn to_protocol(v: VolumeInfo) -> Volume {
    Volume {
        name: v.name,
        mountpoint: v.mountpoint,
        created_at: Some(v.created_at),
        status: Some(status_json(&v.status)),
    }
}
