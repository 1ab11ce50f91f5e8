//! S3 as pd's artifact store and as the place a ledger is mirrored to.
//!
//! Endpoint, region and credentials come from the environment the usual AWS way
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles),
//! through aws-config. With a custom endpoint, addressing is path-style. Every request is
//! retried with exponential backoff on timeouts, connection failures and 5xx; then the
//! error names the store and what failed.
//!
//! Layout under `s3://bucket/prefix/`: `objects/<blake3 hex>` (content-addressed, written
//! once) and `ledger/…` (the mirror, see [`crate::mirror`]).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use axum::body::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use pd_store::{BlobStore, StoreError};

/// Objects larger than this are uploaded in parts of this size.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Attempts per request (the first plus retries).
const ATTEMPTS: u32 = 6;

/// An `s3://bucket/prefix` location, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix: empty, or ending in `/`.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an S3 location: write s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.len() < 3
            || !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        {
            return Err(format!(
                "{bucket:?} in {url:?} is not an S3 bucket name (3–63 lowercase letters, digits, '-' or '.')"
            ));
        }
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("the prefix of {url:?} may not contain . or .. segments"));
        }
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(S3Url { bucket: bucket.to_string(), prefix })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }
}

/// An S3 bucket prefix, used from blocking code: it drives its requests on its own runtime,
/// so it can be called from a CLI's main thread or a server's blocking tasks alike (never
/// from inside an async task).
pub struct S3Store {
    client: aws_sdk_s3::Client,
    url: S3Url,
    rt: OwnRuntime,
}

/// A runtime that may be dropped anywhere, even inside another runtime.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl S3Store {
    /// Connects to `url` (`s3://bucket/prefix`) with the environment's AWS settings.
    pub fn open(url: &str) -> Result<S3Store, StoreError> {
        let url = S3Url::parse(url).map_err(|message| StoreError::Remote { at: url.to_string(), message })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pd-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Remote { at: url.to_string(), message: e.to_string() })?;
        let client = rt.block_on(client());
        Ok(S3Store { client, url, rt: OwnRuntime(Some(rt)) })
    }

    /// Where this store is.
    pub fn url(&self) -> &S3Url {
        &self.url
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.0.as_ref().expect("the runtime lives until drop").block_on(f)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.url.prefix)
    }

    fn object_name(blake3: &[u8; 32]) -> String {
        format!("objects/{}", hex::encode(blake3))
    }

    fn fail<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        what: &str,
        name: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError {
        let hint = match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                " (unreachable or too slow after retries: check AWS_ENDPOINT_URL and that the server is up)"
            }
            SdkError::ServiceError(s)
                if matches!(
                    s.err().code(),
                    Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
                ) =>
            {
                " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's rights on the bucket)"
            }
            SdkError::ServiceError(s) if s.err().code() == Some("NoSuchBucket") => {
                " (create the bucket first)"
            }
            _ => "",
        };
        StoreError::Remote {
            at: self.url.to_string(),
            message: format!("{what} {name}: {}{hint}", causes(&e)),
        }
    }

    /// The size of `name` under the prefix, or `None` if absent.
    pub fn size_of(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.block_on(self.head(name))
    }

    async fn head(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.client.head_object().bucket(&self.url.bucket).key(self.key(name)).send().await {
            Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(self.fail("checking", name, e)),
        }
    }

    /// The bytes of `name` under the prefix (a mirror segment or head: at most
    /// [`crate::limits::S3_LEDGER_OBJECT_BYTES`]), or `None` if absent.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_at_most(name, crate::limits::S3_LEDGER_OBJECT_BYTES)
    }

    /// The bytes of `name`, or `None` if absent; [`StoreError::TooLarge`] as soon as its
    /// `Content-Length`, or what arrives, passes `max_bytes`.
    pub fn read_at_most(&self, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.block_on(async {
            let got = self.client.get_object().bucket(&self.url.bucket).key(self.key(name)).send().await;
            let mut out = match got {
                Ok(o) => o,
                Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
                Err(e) => return Err(self.fail("reading", name, e)),
            };
            let declared = out.content_length().unwrap_or(0).max(0) as u64;
            if declared > max_bytes {
                return Err(StoreError::TooLarge { limit_bytes: max_bytes });
            }
            let mut bytes = Vec::with_capacity(declared as usize);
            loop {
                let chunk = out.body.try_next().await.map_err(|e| StoreError::Remote {
                    at: self.url.to_string(),
                    message: format!("reading {name}: the transfer broke off: {e}"),
                })?;
                let Some(chunk) = chunk else { break };
                if (bytes.len() + chunk.len()) as u64 > max_bytes {
                    return Err(StoreError::TooLarge { limit_bytes: max_bytes });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(bytes))
        })
    }

    /// The artifact `blake3`, verified, if it is at most `max_bytes` (the size its package
    /// entry records).
    pub fn get_at_most(&self, blake3: &[u8; 32], max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        let name = Self::object_name(blake3);
        let bytes = self
            .read_at_most(&name, max_bytes)?
            .ok_or_else(|| StoreError::NotFound { hash: hex::encode(blake3) })?;
        if blake3::hash(&bytes).as_bytes() != blake3 {
            return Err(StoreError::Corrupt {
                hash: hex::encode(blake3),
                at: format!("{}/{name}", self.url),
            });
        }
        Ok(bytes)
    }

    /// Writes `name` (replacing it): for the one mutable object, the mirror's head.
    pub fn write(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.block_on(self.upload(name, Bytes::from(bytes), false)).map(drop)
    }

    /// Writes `name` unless it exists. Returns whether it wrote; when it did not, the
    /// caller decides whether the existing object is the same.
    pub fn write_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        self.block_on(async {
            if self.head(name).await?.is_some() {
                return Ok(false);
            }
            self.upload(name, Bytes::from(bytes), true).await
        })
    }

    /// Every name under the prefix that starts with `under`, sorted.
    pub fn list(&self, under: &str) -> Result<Vec<String>, StoreError> {
        self.block_on(async {
            let pages = self
                .client
                .list_objects_v2()
                .bucket(&self.url.bucket)
                .prefix(self.key(under))
                .into_paginator()
                .send();
            let pages: Vec<_> = pages.try_collect().await.map_err(|e| self.fail("listing", under, e))?;
            let mut names: Vec<String> = pages
                .iter()
                .flat_map(|p| p.contents())
                .filter_map(|o| o.key()?.strip_prefix(&self.url.prefix).map(str::to_string))
                .collect();
            names.sort();
            Ok(names)
        })
    }

    /// One PUT, or a multipart upload above [`PART_BYTES`]. With `if_absent` the write is
    /// conditional (`If-None-Match: *`) where the server supports it. Returns whether it
    /// wrote: `false` when the condition failed (412, the object appeared meanwhile).
    async fn upload(&self, name: &str, bytes: Bytes, if_absent: bool) -> Result<bool, StoreError> {
        let key = self.key(name);
        if bytes.len() <= PART_BYTES {
            let mut put =
                self.client.put_object().bucket(&self.url.bucket).key(&key).body(ByteStream::from(bytes));
            if if_absent {
                put = put.if_none_match("*");
            }
            return self.written(put.send().await, "writing", name);
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.url.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.fail("starting the upload of", name, e))?;
        let id = created.upload_id().unwrap_or_default().to_string();
        let parts = self.upload_parts(name, &key, &id, &bytes).await;
        let done = match parts {
            Ok(parts) => {
                let mut complete = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.url.bucket)
                    .key(&key)
                    .upload_id(&id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
                if if_absent {
                    complete = complete.if_none_match("*");
                }
                self.written(complete.send().await, "completing the upload of", name)
            }
            Err(e) => Err(e),
        };
        if !matches!(done, Ok(true)) {
            // Best effort: an abandoned upload only costs space until the bucket's lifecycle rule.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.url.bucket)
                .key(&key)
                .upload_id(&id)
                .send()
                .await;
        }
        done
    }

    /// The outcome of a (conditional) write: written, lost the race (412), or an error.
    fn written<T, E>(
        &self,
        sent: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        what: &str,
        name: &str,
    ) -> Result<bool, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match sent {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(false),
            Err(e) => Err(self.fail(what, name, e)),
        }
    }

    async fn upload_parts(
        &self,
        name: &str,
        key: &str,
        id: &str,
        bytes: &Bytes,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let chunks = (0..bytes.len())
            .step_by(PART_BYTES)
            .map(|start| bytes.slice(start..(start + PART_BYTES).min(bytes.len())));
        futures_util::stream::iter(chunks.enumerate())
            .map(|(i, chunk)| async move {
                let n = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.url.bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .map_err(|e| self.fail(&format!("uploading part {n} of"), name, e))?;
                Ok(CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build())
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await
    }
}

/// An error and its causes on one line, each said once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// An S3 client configured from the environment: retries with backoff, bounded waits,
/// path-style addressing with a custom endpoint, `us-east-1` when no region is set.
async fn client() -> aws_sdk_s3::Client {
    let region = aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(4)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .load()
        .await;
    let path_style = sdk.endpoint_url().is_some();
    let config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style).build();
    aws_sdk_s3::Client::from_conf(config)
}

impl BlobStore for S3Store {
    fn put(&self, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
        let hash = *blake3::hash(bytes).as_bytes();
        // Content-addressed: an object already there is these bytes (reads verify it).
        self.write_new(&Self::object_name(&hash), bytes.to_vec())?;
        Ok(hash)
    }

    fn get(&self, blake3: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        self.get_at_most(blake3, pd_store::Limits::default().max_tarball_bytes)
    }

    fn contains(&self, blake3: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.size_of(&Self::object_name(blake3))?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse_and_bad_ones_say_why() {
        let u = S3Url::parse("s3://pd-test/team/policies/").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("pd-test", "team/policies/"));
        assert_eq!(u.to_string(), "s3://pd-test/team/policies");
        assert_eq!(S3Url::parse("s3://pd-test").unwrap().prefix, "");
        for bad in ["pd-test/x", "s3://", "s3://ab", "s3://Upper/x", "s3://pd-test/a/../b", "https://pd-test"]
        {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }
}
