//! Tells the integration tests whether this machine has what they need (root, FUSE, s3fs,
//! SeaweedFS; dockerd and the rest for the Docker tests; promtool; loop devices), so that
//! `cargo test` reports those it cannot run as ignored, not as passed. Under `CI=true` (or with
//! `BAI_S3_INTEGRATION=1`) none is ignored: there a missing prerequisite fails the test. The
//! tests check their prerequisites again when they run (`tests/support/env.rs`).
use std::path::Path;

fn main() {
    println!(
        "cargo:rustc-check-cfg=cfg(bai_s3_weed, bai_s3_integration, bai_s3_docker, bai_s3_podman, bai_s3_promtool, bai_s3_loop)"
    );
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["CI", "BAI_S3_INTEGRATION", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let forced = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("BAI_S3_INTEGRATION").is_ok_and(|v| v == "1");
    // The SeaweedFS that scripts/deps.sh installs. Watching a path that does not exist would
    // rerun this script, and rebuild the crate, on every build: watch its folder then, and when
    // there is none either, nothing (`touch build.rs` after scripts/deps.sh made `.venv`).
    let weed = Path::new(".venv/bin/weed");
    if let Some(p) = [weed, Path::new(".venv/bin")]
        .into_iter()
        .find(|p| p.exists())
    {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let on_path = |prog: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    };
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    let weed = weed.is_file();
    let fuse = Path::new("/dev/fuse").exists();
    let daemon = weed && root && fuse && on_path("s3fs");
    let docker = weed
        && root
        && fuse
        && ["docker", "dockerd", "debootstrap", "chroot", "tar"]
            .into_iter()
            .all(on_path)
        && Path::new("/bin/busybox").is_file();
    let podman = daemon
        && ["podman", "runc", "tar", "chroot"].into_iter().all(on_path)
        && Path::new("/bin/busybox").is_file();
    // The power-cut test's ext4 on a loop device.
    let loop_fs = Path::new("/dev/loop-control").exists() && on_path("mkfs.ext4");
    for (cfg, present) in [
        ("bai_s3_weed", weed),
        ("bai_s3_integration", daemon),
        ("bai_s3_docker", docker),
        ("bai_s3_podman", podman),
        ("bai_s3_promtool", on_path("promtool")),
        ("bai_s3_loop", loop_fs),
    ] {
        if present || forced {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}
