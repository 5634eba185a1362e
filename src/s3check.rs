//! Bucket checks at Create: a typo in a bucket or backend fails at `docker volume create`, with
//! a message that tells a missing bucket, refused credentials and an unreachable endpoint apart,
//! instead of at container start.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::backends::Backend;

/// A boxed future, so that checkers can live behind `dyn` (a fake one in unit tests).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a bucket check failed: the three usual causes (missing, denied, unreachable) told
/// apart, each with what the user can do. `backend` is the backend's name in the backends
/// file; the endpoint is shown, the keys never.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("bucket {bucket:?} does not exist on backend {backend:?} ({endpoint}); create it, or add -o create-bucket=true")]
    Missing {
        backend: String,
        endpoint: String,
        bucket: String,
    },
    #[error("backend {backend:?} ({endpoint}) denied access to bucket {bucket:?} (HTTP {status}): check the access-key and secret-key of backend {backend:?} in the backends file, and the bucket's policy")]
    Denied {
        backend: String,
        endpoint: String,
        bucket: String,
        status: u16,
    },
    #[error(
        "backend {backend:?} ({endpoint}) answered HTTP {status} for bucket {bucket:?}: {detail}"
    )]
    Answered {
        backend: String,
        endpoint: String,
        bucket: String,
        status: u16,
        detail: String,
    },
    #[error("backend {backend:?} ({endpoint}) did not answer within {secs} s")]
    Timeout {
        backend: String,
        endpoint: String,
        secs: u64,
    },
    #[error("backend {backend:?} is unreachable: cannot connect to {endpoint} ({detail})")]
    Unreachable {
        backend: String,
        endpoint: String,
        detail: String,
    },
    #[error("checking bucket {bucket:?} on backend {backend:?} ({endpoint}) failed: {detail}")]
    Failed {
        backend: String,
        endpoint: String,
        bucket: String,
        detail: String,
    },
    /// The backend's own settings are unusable (its CA file, its TLS settings).
    #[error("backend {backend:?}: {source}")]
    Settings {
        backend: String,
        #[source]
        source: SettingsError,
    },
    #[error("creating bucket {bucket:?} failed: {cause}")]
    Create {
        bucket: String,
        #[source]
        cause: Box<BucketError>,
    },
}

/// Why a backend's TLS client cannot be built: found before any request is sent. The causes
/// are shared (`Arc`) because a [`BucketError`] is cloned to every caller of one Create.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read ca-file {} of the backend: {source}", .path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS client would panic on it (it `expect`s every certificate to parse).
    #[error("ca-file {} of the backend holds no usable CA certificate: {source}; give a PEM file of CA certificates", .path.display())]
    CaCertificates {
        path: PathBuf,
        #[source]
        source: CaProblem,
    },
    #[error("invalid TLS settings of the backend: {source}")]
    Tls {
        #[source]
        source: aws_smithy_http_client::HttpClientError,
    },
}

/// Why a ca-file's contents cannot be trusted roots.
#[derive(Debug, thiserror::Error)]
pub enum CaProblem {
    #[error("not PEM ({0})")]
    NotPem(#[source] rustls_pki_types::pem::Error),
    #[error("no CERTIFICATE block in it")]
    NoCertificate,
    #[error("certificate {number} does not parse ({source})")]
    Unparsable {
        number: usize,
        #[source]
        source: rustls::Error,
    },
}

/// Checks that a bucket answers on a backend, creating it when asked.
pub trait BucketChecker: Send + Sync + 'static {
    /// `backend_name` only appears in the error.
    fn check<'a>(
        &'a self,
        backend_name: &'a str,
        backend: &'a Backend,
        bucket: &'a str,
        create: bool,
    ) -> BoxFuture<'a, Result<(), BucketError>>;
}

/// The real checker, with aws-sdk-s3 and a bounded time per check.
pub struct S3Checker {
    pub timeout: Duration,
}

/// The HTTPS client: public roots plus the backend's own CA file when it has one.
fn http_client(backend: &Backend) -> Result<aws_sdk_s3::config::SharedHttpClient, SettingsError> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let mut trust = TrustStore::default();
    if let Some(ca) = &backend.ca_file {
        let pem = std::fs::read(ca).map_err(|e| SettingsError::CaFile {
            path: ca.clone(),
            source: e,
        })?;
        check_ca_pem(&pem).map_err(|problem| SettingsError::CaCertificates {
            path: ca.clone(),
            source: problem,
        })?;
        trust = trust.with_pem_certificate(pem);
    }
    let ctx = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| SettingsError::Tls { source: e })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(ctx)
        .build_https())
}

/// What the TLS client does with a ca-file, done first: it parses the PEM and adds each
/// certificate to its roots with `expect`, so a file it cannot take must be refused here.
fn check_ca_pem(pem: &[u8]) -> Result<(), CaProblem> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CaProblem::NotPem)?;
    if ders.is_empty() {
        return Err(CaProblem::NoCertificate);
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, der) in ders.into_iter().enumerate() {
        roots.add(der).map_err(|source| CaProblem::Unparsable {
            number: n + 1,
            source,
        })?;
    }
    Ok(())
}

fn client(backend: &Backend, timeout: Duration) -> Result<aws_sdk_s3::Client, SettingsError> {
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

/// Which of the usual causes an SDK failure is.
fn explain<E>(
    err: &SdkError<E, HttpResponse>,
    name: &str,
    backend: &Backend,
    bucket: &str,
    timeout: Duration,
) -> BucketError
where
    E: std::error::Error + 'static,
{
    let (backend_name, endpoint, bucket) = (
        name.to_string(),
        backend.endpoint.clone(),
        bucket.to_string(),
    );
    match err {
        SdkError::ServiceError(e) => match e.raw().status().as_u16() {
            404 => BucketError::Missing {
                backend: backend_name,
                endpoint,
                bucket,
            },
            status @ (401 | 403) => BucketError::Denied {
                backend: backend_name,
                endpoint,
                bucket,
                status,
            },
            status => BucketError::Answered {
                backend: backend_name,
                endpoint,
                bucket,
                status,
                detail: DisplayErrorContext(err).to_string(),
            },
        },
        SdkError::TimeoutError(_) => timed_out(name, backend, timeout),
        SdkError::DispatchFailure(d) if d.is_timeout() => timed_out(name, backend, timeout),
        SdkError::DispatchFailure(_) => BucketError::Unreachable {
            backend: backend_name,
            endpoint,
            detail: DisplayErrorContext(err).to_string(),
        },
        _ => BucketError::Failed {
            backend: backend_name,
            endpoint,
            bucket,
            detail: DisplayErrorContext(err).to_string(),
        },
    }
}

fn timed_out(name: &str, backend: &Backend, timeout: Duration) -> BucketError {
    BucketError::Timeout {
        backend: name.to_string(),
        endpoint: backend.endpoint.clone(),
        secs: timeout.as_secs(),
    }
}

impl BucketChecker for S3Checker {
    fn check<'a>(
        &'a self,
        name: &'a str,
        backend: &'a Backend,
        bucket: &'a str,
        create: bool,
    ) -> BoxFuture<'a, Result<(), BucketError>> {
        Box::pin(async move {
            let timeout = self.timeout;
            let c = client(backend, timeout).map_err(|source| BucketError::Settings {
                backend: name.to_string(),
                source,
            })?;
            let head = tokio::time::timeout(timeout, c.head_bucket().bucket(bucket).send()).await;
            let err = match head {
                Err(_) => return Err(timed_out(name, backend, timeout)),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => explain(&e, name, backend, bucket, timeout),
            };
            if !matches!(err, BucketError::Missing { .. }) || !create {
                return Err(err);
            }
            let made = tokio::time::timeout(timeout, c.create_bucket().bucket(bucket).send()).await;
            match made {
                Err(_) => Err(timed_out(name, backend, timeout)),
                Ok(Ok(_)) => {
                    tracing::info!(
                        backend = name,
                        bucket,
                        "bucket created (create-bucket=true)"
                    );
                    Ok(())
                }
                Ok(Err(e)) => Err(BucketError::Create {
                    bucket: bucket.to_string(),
                    cause: Box::new(explain(&e, name, backend, bucket, timeout)),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(ca_file: &std::path::Path) -> Backend {
        let text = format!(
            "[backends.b]\nendpoint = \"https://s3.example.invalid\"\naccess-key = \"ak\"\nsecret-key = \"sk\"\nca-file = {:?}\n",
            ca_file.display().to_string()
        );
        crate::backends::parse("backends.toml", &text)
            .unwrap()
            .remove("b")
            .unwrap()
    }

    async fn check(ca_file: &std::path::Path) -> BucketError {
        let checker = S3Checker {
            timeout: Duration::from_secs(5),
        };
        checker
            .check("b", &backend(ca_file), "bucket", false)
            .await
            .unwrap_err()
    }

    /// A self-signed CA certificate (P-256), for the ca-file checks.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBiTCCAS+gAwIBAgIUAfG0OSwdZaGkjfYeg79HWUWgBDIwCgYIKoZIzj0EAwIw\nGTEXMBUGA1UEAwwOYmFpLXMzIHRlc3QgQ0EwIBcNMjYxMjA0MTU0OTIxWhgPMjEy\nNjExMTAxNTQ5MjFaMBkxFzAVBgNVBAMMDmJhaS1zMyB0ZXN0IENBMFkwEwYHKoZI\nzj0CAQYIKoZIzj0DAQcDQgAEFPlr/YWqcPRuoez1W0FKVBPU+jvlghonI8P/Q6V8\nxLtXQIKfICgvR76J4DA7LxxYFPaFzjY4Fu5+GMaFhzP+UaNTMFEwHQYDVR0OBBYE\nFFyzQRrSgaH3zR6Er4thRG8FOUKpMB8GA1UdIwQYMBaAFFyzQRrSgaH3zR6Er4th\nRG8FOUKpMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgD6VQunfb\njtWfMWj+9v09Zf5WYbHVePzqoQrttK9sTvcCIQDUwL3x98rX4/gQDeZ9mwXEvyHh\nF9Rm2e+1TtPcOFIw6A==\n-----END CERTIFICATE-----\n";

    /// The TLS client `expect`s a ca-file to parse: what it would panic on is refused first,
    /// naming the file, and a good file passes.
    #[test]
    fn a_ca_file_the_tls_client_cannot_take_is_refused_before_it() {
        assert!(check_ca_pem(CA_PEM.as_bytes()).is_ok());
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check_ca_pem(garbage.as_bytes()),
            Err(CaProblem::Unparsable { number: 1, .. })
        ));
        let second_bad = format!("{CA_PEM}{garbage}");
        assert!(matches!(
            check_ca_pem(second_bad.as_bytes()),
            Err(CaProblem::Unparsable { number: 2, .. })
        ));
        assert!(matches!(
            check_ca_pem(b"no pem here\n"),
            Err(CaProblem::NoCertificate)
        ));
    }

    /// Over the checker: the Create's error names the file and what to give, never a panic.
    #[tokio::test]
    async fn a_ca_file_without_a_parsable_certificate_is_a_settings_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = check(&ca).await.to_string();
        assert!(
            err.starts_with(&format!(
                "backend \"b\": ca-file {} of the backend holds no usable CA certificate: certificate 1 does not parse",
                ca.display()
            )) && err.ends_with("; give a PEM file of CA certificates"),
            "{err}"
        );
    }

    /// A CA file that cannot be read is the backend's settings, said before any request, with
    /// the I/O error kept as the cause.
    #[tokio::test]
    async fn an_unreadable_ca_file_is_a_settings_error_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let err = check(&missing).await;
        assert_eq!(
            err.to_string(),
            format!(
                "backend \"b\": cannot read ca-file {} of the backend: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let io = std::error::Error::source(&err)
            .and_then(|e| e.source())
            .and_then(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));
    }
}
