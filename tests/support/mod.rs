//! Shared support for bai-s3's integration tests: a real SeaweedFS, a real `bai-s3 serve`, a
//! plugin-protocol client speaking as dockerd does, and process/mount inspection, one room each:
//!
//! - `env`: paths, prerequisites (`prereqs`, `require`), polling, random data, unique names, a
//!   seeded generator, `NOBODY`;
//! - `seaweed`: the SeaweedFS server (and its watchdog), `s3_poll`; `s3`: the S3 client;
//! - `daemon`: the daemon under test, its backends file, and the helpers the daemon tests share
//!   (`setup`, `create_ok`, `mount_ok`, ...), `serve_command` for any other `bai-s3 serve`;
//! - `plugin`: the plugin protocol client and reply parser, `answer` for a daemon that may die;
//! - `procfs`: processes (`sigkill`) and the mount table (the one mountinfo parser);
//! - `cleanup`: what a test leaves behind, the daemon's Drop, waiting until nothing is mounted,
//!   `run_ok`, and `mount_guarded` for a mount of the test's own, detached when dropped;
//! - `store`: the daemon's store read as an operator would; `stall`: a stalling TCP proxy.
//!
//! Every test binary under `tests/` starts with `mod support;`; one split into scenario modules
//! (`tests/<binary>/main.rs`) with `#[path = "../support/mod.rs"] mod support;`. Not every binary
//! uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

mod cleanup;
mod daemon;
mod env;
mod plugin;
mod procfs;
mod s3;
mod seaweed;
pub mod stall;
mod store;

// One name space for the tests (`use support::*`); not every binary uses every room.
#[allow(unused_imports)]
pub use {cleanup::*, daemon::*, env::*, plugin::*, procfs::*, s3::*, seaweed::*, store::*};
