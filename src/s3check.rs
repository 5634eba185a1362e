//! Bucket checks at Create: a typo in a bucket or backend fails at `docker volume create`, with
//! a message that tells a missing bucket, refused credentials and an unreachable endpoint apart,
//! instead of at container start.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::backends::Backend;

/// A boxed future, so that checkers can live behind `dyn` (a fake one in unit tests).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks that a bucket answers on a backend, creating it when asked.
pub trait BucketChecker: Send + Sync + 'static {
    /// `Err` carries the whole message for the user; `backend_name` only appears in it.
    fn check<'a>(
        &'a self,
        backend_name: &'a str,
        backend: &'a Backend,
        bucket: &'a str,
        create: bool,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The real checker, with aws-sdk-s3 and a bounded time per check.
pub struct S3Checker {
    pub timeout: Duration,
}

/// The HTTPS client: public roots plus the backend's own CA file when it has one.
fn http_client(backend: &Backend) -> Result<aws_sdk_s3::config::SharedHttpClient, String> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let mut trust = TrustStore::default();
    if let Some(ca) = &backend.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("cannot read ca-file {} of the backend: {e}", ca.display()))?;
        trust = trust.with_pem_certificate(pem);
    }
    let ctx = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| format!("invalid TLS settings of the backend: {e}"))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(ctx)
        .build_https())
}

fn client(backend: &Backend, timeout: Duration) -> Result<aws_sdk_s3::Client, String> {
    let creds = Credentials::new(
        backend.access_key.clone(),
        backend.secret_key.expose().to_string(),
        None,
        None,
        "bai-s3-backends-file",
    );
    let timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .operation_timeout(timeout)
        .build();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http_client(backend)?)
        .region(Region::new(backend.region.clone()))
        .endpoint_url(backend.endpoint.clone())
        .force_path_style(backend.path_style)
        .credentials_provider(creds)
        .timeout_config(timeouts)
        .retry_config(aws_smithy_types::retry::RetryConfig::standard().with_max_attempts(2))
        .build();
    Ok(aws_sdk_s3::Client::from_conf(conf))
}

/// Words for an SDK failure that say which of the three usual causes it is.
fn explain<E>(
    err: &SdkError<E, HttpResponse>,
    name: &str,
    backend: &Backend,
    bucket: &str,
    timeout: Duration,
) -> (Option<u16>, String)
where
    E: std::error::Error + 'static,
{
    let endpoint = &backend.endpoint;
    match err {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let msg = match status {
                404 => format!("bucket {bucket:?} does not exist on backend {name:?} ({endpoint}); create it, or add -o create-bucket=true"),
                401 | 403 => format!("backend {name:?} ({endpoint}) denied access to bucket {bucket:?} (HTTP {status}): check the access-key and secret-key of backend {name:?} in the backends file, and the bucket's policy"),
                s => format!("backend {name:?} ({endpoint}) answered HTTP {s} for bucket {bucket:?}: {}", DisplayErrorContext(err)),
            };
            (Some(status), msg)
        }
        SdkError::TimeoutError(_) => (
            None,
            format!(
                "backend {name:?} ({endpoint}) did not answer within {} s",
                timeout.as_secs()
            ),
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => (
            None,
            format!(
                "backend {name:?} ({endpoint}) did not answer within {} s",
                timeout.as_secs()
            ),
        ),
        SdkError::DispatchFailure(_) => (
            None,
            format!(
                "backend {name:?} is unreachable: cannot connect to {endpoint} ({})",
                DisplayErrorContext(err)
            ),
        ),
        _ => (
            None,
            format!(
                "checking bucket {bucket:?} on backend {name:?} ({endpoint}) failed: {}",
                DisplayErrorContext(err)
            ),
        ),
    }
}

impl BucketChecker for S3Checker {
    fn check<'a>(
        &'a self,
        name: &'a str,
        backend: &'a Backend,
        bucket: &'a str,
        create: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let timeout = self.timeout;
            let c = client(backend, timeout).map_err(|e| format!("backend {name:?}: {e}"))?;
            let head = tokio::time::timeout(timeout, c.head_bucket().bucket(bucket).send()).await;
            let err = match head {
                Err(_) => {
                    return Err(format!(
                        "backend {name:?} ({}) did not answer within {} s",
                        backend.endpoint,
                        timeout.as_secs()
                    ))
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
            };
            let (status, msg) = explain(&err, name, backend, bucket, timeout);
            if status != Some(404) || !create {
                return Err(msg);
            }
            let made = tokio::time::timeout(timeout, c.create_bucket().bucket(bucket).send()).await;
            match made {
                Err(_) => Err(format!(
                    "backend {name:?} ({}) did not answer within {} s",
                    backend.endpoint,
                    timeout.as_secs()
                )),
                Ok(Ok(_)) => {
                    tracing::info!(
                        backend = name,
                        bucket,
                        "bucket created (create-bucket=true)"
                    );
                    Ok(())
                }
                Ok(Err(e)) => {
                    let (_, msg) = explain(&e, name, backend, bucket, timeout);
                    Err(format!("creating bucket {bucket:?} failed: {msg}"))
                }
            }
        })
    }
}
