//! Raw S3 beyond the test support's client: many small PUTs for the set-up, and the floor of
//! the data path (multipart PUT, ranged GETs). Same SDK client, on a runtime of its own with a
//! worker per CPU (the support's has two), so that the floor is not held down by the client.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use crate::support::{self, sdk_err};
use crate::Res;

pub struct Raw {
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

impl Raw {
    pub fn new(s3: &support::S3) -> Raw {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Raw {
            client: s3.client().clone(),
            rt,
        }
    }

    /// PUT `keys` (small bodies), 16 at a time.
    pub fn put_many(&self, bucket: &str, keys: Vec<String>, body: Bytes) -> Res<()> {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let mut keys = keys.into_iter();
            loop {
                while set.len() < 16 {
                    let Some(k) = keys.next() else { break };
                    let req = self
                        .client
                        .put_object()
                        .bucket(bucket)
                        .key(k)
                        .body(ByteStream::from(body.clone()));
                    set.spawn(async move { req.send().await.map(|_| ()).map_err(sdk_err) });
                }
                match set.join_next().await {
                    Some(r) => r.map_err(|e| e.to_string())??,
                    None => return Ok(()),
                }
            }
        })
    }

    /// Multipart PUT of `data` with `conc` parts of `part` bytes in flight.
    pub fn put_multipart(
        &self,
        bucket: &str,
        key: &str,
        data: &Bytes,
        part: usize,
        conc: usize,
    ) -> Res<Duration> {
        self.rt.block_on(async {
            let t = Instant::now();
            let up = self
                .client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(sdk_err)?;
            let id = up.upload_id().unwrap_or_default().to_string();
            let n = data.len().div_ceil(part);
            let mut set = tokio::task::JoinSet::new();
            let mut parts = Vec::new();
            let mut next = 0;
            while next < n || !set.is_empty() {
                while next < n && set.len() < conc {
                    let body = data.slice(next * part..((next + 1) * part).min(data.len()));
                    let pn = next as i32 + 1;
                    let req = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(&id)
                        .part_number(pn)
                        .body(ByteStream::from(body));
                    set.spawn(async move {
                        let out = req
                            .customize()
                            .disable_payload_signing()
                            .send()
                            .await
                            .map_err(sdk_err)?;
                        Ok::<_, String>(
                            CompletedPart::builder()
                                .part_number(pn)
                                .e_tag(out.e_tag().unwrap_or_default())
                                .build(),
                        )
                    });
                    next += 1;
                }
                if let Some(r) = set.join_next().await {
                    parts.push(r.map_err(|e| e.to_string())??);
                }
            }
            parts.sort_by_key(|p| p.part_number());
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(sdk_err)?;
            Ok(t.elapsed())
        })
    }

    /// Ranged GETs of `part` bytes, `conc` in flight; checks the bytes against `data`.
    pub fn get_ranged(
        &self,
        bucket: &str,
        key: &str,
        data: &Bytes,
        part: usize,
        conc: usize,
    ) -> Res<Duration> {
        self.rt.block_on(async {
            let t = Instant::now();
            let n = data.len().div_ceil(part);
            let mut set = tokio::task::JoinSet::new();
            let mut next = 0;
            while next < n || !set.is_empty() {
                while next < n && set.len() < conc {
                    let (a, b) = (next * part, ((next + 1) * part).min(data.len()));
                    let req = self
                        .client
                        .get_object()
                        .bucket(bucket)
                        .key(key)
                        .range(format!("bytes={}-{}", a, b - 1));
                    let want = data.slice(a..b);
                    set.spawn(async move {
                        let out = req.send().await.map_err(sdk_err)?;
                        let got = out.body.collect().await.map_err(|e| e.to_string())?;
                        if got.into_bytes() != want {
                            return Err(format!("ranged GET {a}-{b}: wrong bytes"));
                        }
                        Ok::<_, String>(())
                    });
                    next += 1;
                }
                if let Some(r) = set.join_next().await {
                    r.map_err(|e| e.to_string())??;
                }
            }
            Ok(t.elapsed())
        })
    }
}
