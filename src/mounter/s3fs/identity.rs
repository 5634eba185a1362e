//! Naming: what makes one s3fs process ([`Identity`]), the shared mount's name, and the s3fs
//! command line (which never holds a secret).

use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::S3fsMounter;
use crate::backends::Secret;
use crate::layout;
use crate::mounter::sys::Sys;
use crate::mounter::MountSpec;
use crate::options::Tuning;

/// Everything that makes one s3fs process: volumes share a process exactly when all of it is
/// equal. The secret key is part of it (a rotated key gets a new process), and reaches the
/// name only through a hash keyed with the host's own key. Read-only is part of it too: a
/// read-only volume gets an s3fs mounted read-only (`-o ro`), whose superblock refuses writes
/// whatever a runtime does to the flags of a bind of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    backend: String,
    endpoint: String,
    region: String,
    path_style: bool,
    ca_file: Option<PathBuf>,
    access_key: String,
    secret_key: Secret,
    bucket: String,
    uid: u32,
    gid: u32,
    umask: u32,
    tuning: Tuning,
    read_only: bool,
}

impl Identity {
    pub fn of(spec: &MountSpec) -> Self {
        let (o, b) = (&spec.options, &spec.backend);
        Identity {
            backend: o.backend.clone(),
            endpoint: b.endpoint.clone(),
            region: b.region.clone(),
            path_style: b.path_style,
            ca_file: b.ca_file.clone(),
            access_key: b.access_key.clone(),
            secret_key: b.secret_key.clone(),
            bucket: o.bucket.clone(),
            uid: o.uid,
            gid: o.gid,
            umask: o.umask,
            tuning: o.tuning,
            read_only: o.ro,
        }
    }

    /// The shared mount's name: `<backend>-<bucket>-<32 hex digits>` (`<backend>-<bucket>-ro-<32
    /// hex digits>` when read-only), readable, the same in every run on this host (so a
    /// restarted daemon joins its mounts), and different for every other identity: the digits
    /// are HMAC-SHA256 (keyed with `key`) over every field, each length-prefixed, so no two
    /// identities encode alike. A read-only identity has one field more, so a writable one
    /// hashes as it would without the read-only field. Live mounts of an earlier version are
    /// adopted by the shared mount each volume's record keeps, whatever names this version
    /// gives.
    pub fn name(&self, key: &[u8]) -> String {
        // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        let t = &self.tuning;
        let ca = self
            .ca_file
            .as_ref()
            .map(|p| format!("some:{}", p.display()));
        let fields: [&[u8]; 19] = [
            b"bai-s3 shared mount v2",
            self.backend.as_bytes(),
            self.endpoint.as_bytes(),
            self.region.as_bytes(),
            if self.path_style { b"1" } else { b"0" },
            ca.as_deref().unwrap_or("none").as_bytes(),
            self.access_key.as_bytes(),
            self.secret_key.expose().as_bytes(),
            self.bucket.as_bytes(),
            &self.uid.to_be_bytes(),
            &self.gid.to_be_bytes(),
            &self.umask.to_be_bytes(),
            if t.cache { b"1" } else { b"0" },
            &t.parallel_count.to_be_bytes(),
            &t.multipart_size.to_be_bytes(),
            &t.stat_cache_expire.to_be_bytes(),
            if t.negative_cache { b"1" } else { b"0" },
            if t.compat_dir { b"1" } else { b"0" },
            b"end",
        ];
        let read_only: &[&[u8]] = if self.read_only { &[b"read-only"] } else { &[] };
        for f in fields.iter().chain(read_only) {
            mac.update(&(f.len() as u64).to_be_bytes());
            mac.update(f);
        }
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let ro = if self.read_only { "ro-" } else { "" };
        format!("{}-{}-{ro}{hex}", self.backend, self.bucket)
    }
}

impl<S: Sys> S3fsMounter<S> {
    /// The shared mount's name for `spec` (see [`Identity::name`]).
    pub(super) fn shared_name(&self, spec: &MountSpec) -> String {
        Identity::of(spec).name(&self.cfg.name_key)
    }

    /// The s3fs log of the shared mount `name`.
    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        layout::log_file(&self.cfg.state_dir, name)
    }

    /// Where s3fs stages open files: on the state folder's disk, never the host's `/tmp`.
    pub(super) fn tmp_rel(name: &str) -> PathBuf {
        Path::new(layout::TMP).join(name)
    }

    /// The s3fs command line; no secret in it.
    pub(super) fn s3fs_args(&self, spec: &MountSpec, name: &str, path: &Path) -> Vec<String> {
        let o = &spec.options;
        let b = &spec.backend;
        let mut opts = vec![
            format!("url={}", b.endpoint),
            format!("endpoint={}", b.region),
            "allow_other".to_string(),
            // No set-uid program or device node in a bucket means anything on the host.
            "nosuid".to_string(),
            "nodev".to_string(),
            format!("uid={}", o.uid),
            format!("gid={}", o.gid),
            format!("umask={:04o}", o.umask),
            format!("mp_umask={:04o}", o.umask),
            format!("parallel_count={}", o.tuning.parallel_count),
            format!("multipart_size={}", o.tuning.multipart_size),
            format!("stat_cache_expire={}", o.tuning.stat_cache_expire),
            "retries=2".to_string(),
            "connect_timeout=5".to_string(),
            "dbglevel=warn".to_string(),
            format!(
                "tmpdir={}",
                self.cfg.state_dir.join(Self::tmp_rel(name)).display()
            ),
            // s3fs refuses to grow staging files (and the cache) below this many MiB free,
            // so a huge write fails with ENOSPC or streams out instead of filling the disk.
            format!("ensure_diskfree={}", self.cfg.min_disk_free),
            // s3fs's own log file is written line by line; its stdout is block-buffered and
            // would say nothing before it exits.
            format!("logfile={}", self.log_path(name).display()),
        ];
        if o.ro {
            // The FUSE superblock itself is read-only: no remount of a bind makes it writable.
            opts.push("ro".to_string());
        }
        if b.path_style {
            opts.push("use_path_request_style".to_string());
        }
        if !o.tuning.compat_dir {
            opts.push("notsup_compat_dir".to_string());
        }
        // Never by default: s3fs renews a missing name's entry at each lookup, so a name that
        // is polled for would stay missing after another writer put it (see `Tuning`).
        if o.tuning.negative_cache {
            opts.push("enable_noobj_cache".to_string());
        }
        if o.tuning.cache {
            let dir = self.cfg.state_dir.join(layout::CACHE).join(name);
            opts.push(format!("use_cache={}", dir.display()));
            opts.push("del_cache".to_string());
        }
        vec![
            o.bucket.clone(),
            path.display().to_string(),
            "-f".to_string(),
            "-o".to_string(),
            opts.join(","),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::spec;
    use super::*;
    use crate::backends::Backend;
    use crate::fsutil;
    use crate::mounter::s3fs::S3fsConfig;
    use std::time::Duration;

    fn name(pairs: &[(&str, &str)]) -> String {
        Identity::of(&spec(pairs)).name(&[7; fsutil::KEY_LEN])
    }

    #[test]
    fn shared_names_split_on_settings_and_ro_but_not_on_prefix() {
        let a = name(&[("bucket", "abc")]);
        let b = name(&[("bucket", "abc"), ("prefix", "p/q")]);
        assert_eq!(a, b);
        for other in [
            name(&[("bucket", "abc"), ("uid", "1000")]),
            name(&[("bucket", "abc"), ("compat-dir", "false")]),
            name(&[("bucket", "abc"), ("cache", "true")]),
            name(&[("bucket", "abc"), ("negative-cache", "true")]),
            name(&[("bucket", "abc"), ("stat-cache-expire", "30")]),
            name(&[("bucket", "abd")]),
            name(&[("bucket", "abc"), ("ro", "true")]),
        ] {
            assert_ne!(a, other);
        }
        // Pinned format: `<backend>-<bucket>-<32 hex>`, HMAC-SHA256 with the host's key. A name
        // changes only with the settings of the s3fs behind it (this version's default runs
        // without s3fs's negative cache, so default volumes are named anew); a restarted daemon
        // finds live mounts by the shared mount each volume's record keeps, not by the name.
        assert_eq!(a, "default-abc-7bdc09f23a238274558f2a6bf7709669");
        let tuned = name(&[("bucket", "abc"), ("uid", "1000"), ("cache", "true")]);
        assert_eq!(tuned, "default-abc-49e0de2365a8fda39be3045988f9ee38");
        // A read-only volume has an s3fs of its own, whatever its prefix, named so.
        let ro = name(&[("bucket", "abc"), ("ro", "true")]);
        assert_eq!(
            ro,
            name(&[("bucket", "abc"), ("ro", "true"), ("prefix", "p")])
        );
        assert_eq!(ro, "default-abc-ro-a6b58e100e8f6a80b9216e282ad27396");
        // Another host key, another name; the secret key never shows.
        let other_host = Identity::of(&spec(&[("bucket", "abc")])).name(&[8; fsutil::KEY_LEN]);
        assert_ne!(a, other_host);
        assert!(!a.contains("TOPSECRET"));
    }

    #[test]
    fn names_cannot_meet_across_field_boundaries() {
        // The old name joined fields with '-' and '|': backend `a-b` with bucket `c` and
        // backend `a` with bucket `b-c` met. Length-prefixed fields keep them apart.
        let mut x = spec(&[("bucket", "ccc"), ("backend", "a-b")]);
        let mut y = spec(&[("bucket", "b-ccc"), ("backend", "a")]);
        assert_eq!(
            format!("{}-{}", x.options.backend, x.options.bucket),
            format!("{}-{}", y.options.backend, y.options.bucket)
        );
        let key = [1; fsutil::KEY_LEN];
        assert_ne!(Identity::of(&x).name(&key), Identity::of(&y).name(&key));
        // Every backend setting counts, the secret key too (a rotated key gets a new s3fs).
        let base = Identity::of(&x).name(&key);
        x.backend.region = "eu-west-1".into();
        assert_ne!(Identity::of(&x).name(&key), base);
        y = spec(&[("bucket", "ccc"), ("backend", "a-b")]);
        y.backend.secret_key = toml::from_str::<Backend>(
            "endpoint = \"http://127.0.0.1:1\"\naccess-key = \"AK\"\nsecret-key = \"OTHER\"\n",
        )
        .unwrap()
        .secret_key;
        assert_ne!(Identity::of(&y).name(&key), base);
        assert_ne!(
            Identity::of(&y),
            Identity::of(&spec(&[("bucket", "ccc"), ("backend", "a-b")]))
        );
    }

    /// A real mounter over `/m` and `/s` (nothing is mounted: for its command lines).
    fn mounter() -> S3fsMounter {
        S3fsMounter::new(S3fsConfig {
            mount_root: "/m".into(),
            state_dir: "/s".into(),
            mount_timeout: Duration::from_secs(1),
            program: "s3fs".into(),
            min_disk_free: 512,
            max_mounts: 0,
            name_key: [7; fsutil::KEY_LEN],
        })
    }

    #[test]
    fn the_command_line_holds_no_secret() {
        let m = mounter();
        let s = spec(&[("bucket", "abc"), ("uid", "1000"), ("cache", "true")]);
        let args = m.s3fs_args(&s, "n", Path::new("/m/.s3fs/n")).join(" ");
        assert!(!args.contains("TOPSECRET"), "{args}");
        assert!(args.contains("uid=1000") && args.contains("allow_other") && args.contains(" -f "));
        assert!(args.contains("use_cache=/s/cache/n"));
        assert!(args.contains("tmpdir=/s/tmp/n,") && args.contains("ensure_diskfree=512"));
        assert!(!args.contains("notsup_compat_dir"));
        // Fresh by default: metadata cached 1 s, missing names not remembered.
        assert!(args.contains(",stat_cache_expire=1,"), "{args}");
        assert!(!args.contains("enable_noobj_cache"), "{args}");
        let s = spec(&[("bucket", "abc"), ("compat-dir", "false")]);
        let args = m.s3fs_args(&s, "n", Path::new("/m/.s3fs/n")).join(" ");
        assert!(args.contains(",notsup_compat_dir"), "{args}");
        let s = spec(&[("bucket", "abc"), ("negative-cache", "true")]);
        let args = m.s3fs_args(&s, "n", Path::new("/m/.s3fs/n")).join(" ");
        assert!(args.contains(",enable_noobj_cache"), "{args}");
    }

    /// The FUSE mount options (`-o a,b,c`) of the s3fs started for `pairs`.
    fn fuse_options(pairs: &[(&str, &str)]) -> Vec<String> {
        let m = mounter();
        let args = m.s3fs_args(&spec(pairs), "n", Path::new("/m/.s3fs/n"));
        let at = args.iter().position(|a| a == "-o").unwrap();
        args[at + 1].split(',').map(str::to_string).collect()
    }

    #[test]
    fn every_s3fs_is_nosuid_nodev_and_a_read_only_one_is_mounted_ro() {
        let rw = fuse_options(&[("bucket", "abc")]);
        let ro = fuse_options(&[("bucket", "abc"), ("ro", "true")]);
        for o in [&rw, &ro] {
            assert!(o.iter().any(|x| x == "nosuid"), "{o:?}");
            assert!(o.iter().any(|x| x == "nodev"), "{o:?}");
        }
        assert!(!rw.iter().any(|x| x == "ro" || x == "rw"), "{rw:?}");
        assert!(ro.iter().any(|x| x == "ro"), "{ro:?}");
    }
}
