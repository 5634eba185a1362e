//! An S3 client (aws-sdk-s3, configured by hand: no aws-config, no AWS_* from the environment).

use std::time::Duration;

pub struct S3 {
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

/// An SDK error with its whole chain of causes.
pub fn sdk_err<E: std::error::Error>(e: E) -> String {
    format!("{}", aws_sdk_s3::error::DisplayErrorContext(e))
}

impl S3 {
    /// `probe`: one attempt with short timeouts (readiness polling).
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str, probe: bool) -> S3 {
        use aws_sdk_s3::config::{
            retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Credentials, Region,
            RequestChecksumCalculation, ResponseChecksumValidation,
        };
        let (attempts, op_timeout) = if probe { (1, 3) } else { (3, 60) };
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            // Plain HTTP to the local server; no TLS settings from the environment.
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "bai-s3-tests",
            ))
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(op_timeout))
                    .build(),
            )
            .build();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        S3 {
            client: aws_sdk_s3::Client::from_conf(conf),
            rt,
        }
    }

    /// The SDK client, for the operations this wrapper has no method for (the bench's
    /// multipart upload and ranged reads).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn list_buckets(&self) -> Result<Vec<String>, String> {
        let out = self
            .rt
            .block_on(self.client.list_buckets().send())
            .map_err(sdk_err)?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect())
    }

    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, String> {
        match self
            .rt
            .block_on(self.client.head_bucket().bucket(bucket).send())
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .map(|s| s.is_not_found())
                    .unwrap_or(false)
                    || e.raw_response()
                        .map(|r| r.status().as_u16() == 404)
                        .unwrap_or(false);
                if not_found {
                    Ok(false)
                } else {
                    Err(sdk_err(e))
                }
            }
        }
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        self.rt
            .block_on(self.client.create_bucket().bucket(bucket).send())
            .map_err(sdk_err)?;
        Ok(())
    }

    /// Deletes an (empty) bucket, e.g. behind a volume's back.
    pub fn delete_bucket(&self, bucket: &str) -> Result<(), String> {
        self.rt
            .block_on(self.client.delete_bucket().bucket(bucket).send())
            .map_err(sdk_err)?;
        Ok(())
    }

    pub fn create_bucket_if_missing(&self, bucket: &str) -> Result<(), String> {
        if self.bucket_exists(bucket)? {
            return Ok(());
        }
        self.create_bucket(bucket)
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let body = aws_sdk_s3::primitives::ByteStream::from(body.to_vec());
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body)
                    .send(),
            )
            .map_err(sdk_err)?;
        Ok(())
    }

    /// PUT with user metadata (`x-amz-meta-<name>` headers), e.g. the `mode` by which s3fs
    /// makes an object a symbolic link.
    pub fn put_with_metadata(
        &self,
        bucket: &str,
        key: &str,
        body: &[u8],
        metadata: &[(&str, &str)],
    ) -> Result<(), String> {
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()));
        for (k, v) in metadata {
            req = req.metadata(*k, *v);
        }
        self.rt.block_on(req.send()).map_err(sdk_err)?;
        Ok(())
    }

    /// Ok(None) when the object does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.rt.block_on(async {
            match self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => {
                    let data = out
                        .body
                        .collect()
                        .await
                        .map_err(|e| format!("read body: {e}"))?;
                    Ok(Some(data.into_bytes().to_vec()))
                }
                Err(e) => {
                    if e.as_service_error()
                        .map(|s| s.is_no_such_key())
                        .unwrap_or(false)
                        || e.raw_response()
                            .map(|r| r.status().as_u16() == 404)
                            .unwrap_or(false)
                    {
                        Ok(None)
                    } else {
                        Err(sdk_err(e))
                    }
                }
            }
        })
    }

    /// All keys of the bucket (under `prefix` when given), sorted.
    pub fn list(&self, bucket: &str, prefix: Option<&str>) -> Result<Vec<String>, String> {
        self.rt.block_on(async {
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut req = self.client.list_objects_v2().bucket(bucket);
                if let Some(p) = prefix {
                    req = req.prefix(p);
                }
                if let Some(t) = &token {
                    req = req.continuation_token(t);
                }
                let out = req.send().await.map_err(sdk_err)?;
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            keys.sort();
            Ok(keys)
        })
    }
}
