//! What a run is on: date, machine and the versions of the programs compared.

use std::fs;
use std::process::Command;

use serde_json::{json, Value};

use crate::rig::rclone_bin;
use crate::support;

pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub nproc: usize,
    pub cpu: String,
    pub mem_gib: u64,
    /// Program name → its first line of `--version`.
    pub versions: Value,
}

impl Machine {
    pub fn collect() -> Machine {
        let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mem_gib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
            / 1024;
        let (weed, bai, rclone) = (support::weed_bin(), support::daemon_bin(), rclone_bin());
        let versions = json!({
            "bai-s3": first_line(bai.to_str().unwrap_or("bai-s3"), &["--version"]),
            "s3fs": first_line("s3fs", &["--version"]),
            "rclone": first_line(rclone.to_str().unwrap_or("rclone"), &["version"]),
            "weed": first_line(weed.to_str().unwrap_or("weed"), &["version"]),
        });
        Machine {
            date,
            kernel,
            nproc,
            cpu,
            mem_gib,
            versions,
        }
    }
}

fn first_line(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).to_string();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("({prog}: {e})"))
}
