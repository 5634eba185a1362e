//! bai-s3: S3 buckets as Docker volumes.
//!
//! dockerd → unix socket ([`server`], [`protocol`]) → [`driver`] (volumes, holders, [`state`])
//! → [`mounter`] (s3fs processes and bind mounts) → S3. [`backends`] holds endpoints and
//! credentials, [`options`] the per-volume choices, [`s3check`] the bucket checks at Create.

pub mod accept;
pub mod backends;
pub mod cli;
pub mod daemon;
pub mod driver;
pub mod error;
pub mod fsutil;
pub mod layout;
pub mod metrics;
pub mod mounter;
pub mod options;
pub mod protocol;
pub mod s3check;
pub mod server;
pub mod state;
pub mod supervise;
