//! The volume driver: the volume table, holder counts and their persistence, between the
//! protocol (which calls it) and the mounter (which it calls).
//!
//! Invariants:
//! - A volume is mounted exactly while some caller ID holds it (or during `--unmount-delay`
//!   after the last one left); one mount per volume however many holders.
//! - Calls on one volume are serialised by that volume's lock; different volumes never wait
//!   for each other. Get and List read a snapshot and never wait for a lock or the network.
//! - Every change is written to the state file before it is acknowledged; when writing fails,
//!   the change is rolled back and the caller gets an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::{oneshot, watch};

use crate::backends::{Backend, Backends};
use crate::error::{unresolvable, Error, Result};
use crate::mounter::{Adoption, Health, MountSpec, Mounter};
use crate::options::{validate_volume_name, OptionError, VolumeOptions};
use crate::s3check::BucketChecker;
use crate::state::{Store, VolumeRecord};

/// Settings of the driver that come from the daemon's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mount_root: PathBuf,
    pub unmount_delay: Duration,
}

/// What Get shows of one volume.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub name: String,
    /// Empty when not mounted.
    pub mountpoint: String,
    pub created_at: String,
    pub status: VolumeStatus,
}

/// A volume's state as `docker volume inspect` shows it, typed: the driver says what holds,
/// the protocol layer decides how Docker sees it.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    pub settings: Shown,
    pub mounted: bool,
    pub holders: u64,
    pub health: Health,
    /// When `mounted` last changed.
    pub since: SystemTime,
    /// The last failed mount attempt.
    pub last_error: Option<Error>,
    /// Why a new mount of this volume would fail, while its existing mounts go on.
    pub problem: Option<Problem>,
}

/// Why a new mount of a volume would fail while its existing mounts go on: shown by Get before
/// anyone tries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Problem {
    #[error("backend {backend:?} is not configured in {path}{}", .file_problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    NoBackend {
        backend: String,
        path: String,
        /// Why the file on disk is not in use, when it is not.
        file_problem: Option<String>,
    },
    #[error("{}", unresolvable(.0))]
    Refused(OptionError),
}

/// A volume's options as this version reads them, or the stored ones it refuses (shown as
/// they are, so that an operator sees which bucket a stuck volume is).
#[derive(Debug, Clone)]
pub enum Shown {
    Parsed(VolumeOptions),
    Refused(BTreeMap<String, String>),
}

/// What List shows of one volume.
#[derive(Debug, Clone)]
pub struct VolumeEntry {
    pub name: String,
    /// Empty when not mounted.
    pub mountpoint: String,
    pub created_at: String,
}

/// The part of a volume that changes, guarded by the volume's lock.
#[derive(Debug, Default)]
struct VolState {
    holders: BTreeMap<String, u64>,
    mounted: bool,
    removed: bool,
    /// The last failed mount attempt, for Status.
    last_failure: Option<Error>,
    /// The delayed unmount waiting out `--unmount-delay` after the last holder left; a new
    /// holder, Remove or shutdown cancels it. Only code holding this state aborts it, so it is
    /// never cut off half-way through its unmount (it takes the same lock first).
    pending_release: Option<tokio::task::AbortHandle>,
    /// The shared mount the live mount is a view of (persisted, for restore).
    shared: Option<String>,
}

/// A copy of the volume's state for Get/List, updated under the volume's lock.
#[derive(Debug, Clone)]
struct View {
    holders: u64,
    mounted: bool,
    since: SystemTime,
    last_error: Option<Error>,
}

/// One queued Mount: the caller's ID and where its answer goes.
struct Waiter {
    id: String,
    reply: oneshot::Sender<Result<PathBuf>>,
}

struct Volume {
    name: String,
    /// The options as stored: written back unchanged, and shown, when this version refuses
    /// them.
    raw: BTreeMap<String, String>,
    /// The parsed options, or why this version refuses the stored ones. Such a volume stays
    /// listed, keeps its live mount and its holders, and answers their Unmounts; only a new
    /// mount of it fails, saying why.
    options: std::result::Result<VolumeOptions, OptionError>,
    created_at: String,
    target: PathBuf,
    state: tokio::sync::Mutex<VolState>,
    view: Mutex<View>,
    /// Mounts waiting to be served by whoever holds `state` (see [`Driver::mount`]).
    queue: Mutex<Vec<Waiter>>,
    /// The driver's List generation, bumped when this volume's mount point comes or goes.
    list_gen: Arc<AtomicU64>,
}

impl Volume {
    fn new(
        name: &str,
        raw: BTreeMap<String, String>,
        options: std::result::Result<VolumeOptions, OptionError>,
        created_at: String,
        root: &Path,
        list_gen: &Arc<AtomicU64>,
    ) -> Self {
        Volume {
            name: name.to_string(),
            raw,
            options,
            created_at,
            target: root.join(name),
            state: tokio::sync::Mutex::new(VolState::default()),
            view: Mutex::new(View {
                holders: 0,
                mounted: false,
                since: SystemTime::now(),
                last_error: None,
            }),
            queue: Mutex::new(Vec::new()),
            list_gen: Arc::clone(list_gen),
        }
    }

    fn record(&self, st: &VolState) -> VolumeRecord {
        VolumeRecord {
            options: self.raw.clone(),
            created_at: self.created_at.clone(),
            holders: st.holders.clone(),
            shared: st.shared.clone(),
        }
    }

    fn queue_push(&self, w: Waiter) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }

    fn queue_take(&self) -> Vec<Waiter> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn queue_is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn publish(&self, st: &VolState) {
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let changed = v.mounted != st.mounted;
        if changed {
            v.since = SystemTime::now();
        }
        v.holders = st.holders.values().sum();
        v.mounted = st.mounted;
        v.last_error = st.last_failure.clone();
        drop(v);
        if changed {
            // After the change is visible: a List built from an older generation is rebuilt.
            self.list_gen.fetch_add(1, Ordering::Release);
        }
    }
}

/// The driver. Shared as `Arc<Driver<M>>` by the server, the restore and the health tasks.
pub struct Driver<M: Mounter> {
    mounter: M,
    checker: Box<dyn BucketChecker>,
    backends: Backends,
    store: Store,
    volumes: DashMap<String, Arc<Volume>>,
    /// Serialises Create's check-then-insert of one name against another Create.
    create_lock: tokio::sync::Mutex<()>,
    settings: Settings,
    /// Closed until restore at start-up has finished: Mount, Unmount and Remove wait for it.
    restored: watch::Receiver<bool>,
    restored_tx: watch::Sender<bool>,
    shutting_down: AtomicBool,
    /// Bumped after every change List shows (a volume added or removed, a mount point come or
    /// gone), so that the server can answer List from a cached reply while it is unchanged.
    list_gen: Arc<AtomicU64>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl<M: Mounter> Driver<M> {
    /// Build the driver from the persisted state. Records whose options no longer parse are
    /// kept in the file and reported, never dropped.
    pub fn new(
        mounter: M,
        checker: Box<dyn BucketChecker>,
        backends: Backends,
        store: Store,
        settings: Settings,
    ) -> Arc<Self> {
        let volumes = DashMap::new();
        let list_gen = Arc::new(AtomicU64::new(0));
        let config = backends.path().display().to_string();
        for (name, rec) in store.records() {
            let options = VolumeOptions::parse(&name, &rec.options, &config).inspect_err(|e| {
                tracing::error!(volume = %name, error = %e, "volume in the state has options this version refuses; it stays listed and keeps its live mount, but cannot be mounted anew");
            });
            let v = Volume::new(
                &name,
                rec.options.clone(),
                options,
                rec.created_at.clone(),
                &settings.mount_root,
                &list_gen,
            );
            if let Ok(mut st) = v.state.try_lock() {
                st.holders = rec.holders.clone();
                st.shared = rec.shared.clone();
                v.publish(&st);
            }
            volumes.insert(name, Arc::new(v));
        }
        let (restored_tx, restored) = watch::channel(false);
        Arc::new(Driver {
            mounter,
            checker,
            backends,
            store,
            volumes,
            create_lock: tokio::sync::Mutex::new(()),
            settings,
            restored,
            restored_tx,
            shutting_down: AtomicBool::new(false),
            list_gen,
        })
    }

    fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        self.volumes
            .get(name)
            .map(|v| v.clone())
            .ok_or_else(|| Error::NoSuchVolume(name.to_string()))
    }

    async fn wait_restored(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mut rx = self.restored.clone();
        let _ = rx.wait_for(|done| *done).await;
        Ok(())
    }

    fn persist(&self, name: &str, record: Option<VolumeRecord>, durable: bool) -> Result<()> {
        self.store
            .update(name, record, durable)
            .map_err(|source| Error::Persist {
                path: self.store.path().display().to_string(),
                source: Arc::new(source),
            })
    }

    /// The backend called `name` in the backends file as it is now.
    fn backend(&self, name: &str) -> Result<Backend> {
        let backends = self.backends.current();
        backends
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownBackend {
                name: name.to_string(),
                path: self.backends.path().display().to_string(),
                known: backends.keys().cloned().collect(),
                problem: self.backends.problem(),
            })
    }

    fn spec(&self, vol: &Volume) -> Result<MountSpec> {
        let options = vol.options.clone().map_err(|refused| Error::Unresolvable {
            name: vol.name.clone(),
            refused,
        })?;
        Ok(MountSpec {
            volume: vol.name.clone(),
            backend: self.backend(&options.backend)?,
            options,
            target: vol.target.clone(),
        })
    }

    /// `/VolumeDriver.Create`: validate, check the bucket, register. Idempotent for the same
    /// options; refused for different ones.
    pub async fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> Result<()> {
        validate_volume_name(name)?;
        let config = self.backends.path().display().to_string();
        let options = VolumeOptions::parse(name, opts, &config)?;
        if let Some(existing) = self.volumes.get(name).map(|v| v.clone()) {
            return same_or_conflict(&existing, &options);
        }
        let backend = self.backend(&options.backend)?;
        self.checker
            .check(
                &options.backend,
                &backend,
                &options.bucket,
                options.create_bucket,
            )
            .await
            .map_err(Error::Bucket)?;

        let _guard = self.create_lock.lock().await;
        if let Some(existing) = self.volumes.get(name).map(|v| v.clone()) {
            return same_or_conflict(&existing, &options);
        }
        let vol = Volume::new(
            name,
            options.to_map(),
            Ok(options),
            rfc3339(SystemTime::now()),
            &self.settings.mount_root,
            &self.list_gen,
        );
        let rec = vol.record(&VolState::default());
        self.persist(name, Some(rec), true)?;
        self.volumes.insert(name.to_string(), Arc::new(vol));
        self.list_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// `/VolumeDriver.Remove`: deregister; the bucket and its objects are never touched.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.wait_restored().await?;
        let vol = self.volume(name)?;
        let mut st = vol.state.lock().await;
        if st.removed {
            return Err(Error::NoSuchVolume(name.to_string()));
        }
        let holders: u64 = st.holders.values().sum();
        if holders > 0 {
            return Err(Error::InUse {
                name: name.to_string(),
                holders,
            });
        }
        {
            // With Create's lock: a Create of this name either sees the volume (and succeeds
            // before it goes) or registers it anew after, never acknowledged and then lost.
            let _guard = self.create_lock.lock().await;
            self.persist(name, None, true)?;
            st.removed = true;
            self.volumes.remove(name);
            self.list_gen.fetch_add(1, Ordering::Release);
        }
        if st.mounted {
            // A delayed unmount was pending: Remove ends the wait.
            self.unmount_now(&vol, &mut st).await;
        }
        Ok(())
    }

    /// `/VolumeDriver.Mount`: count the holder; the first one mounts.
    ///
    /// Callers queue on the volume and whoever holds its lock serves the whole queue: one mount
    /// attempt whose outcome all share, and one state write for all their holders. So 64
    /// containers starting at once cost one s3fs and one write, not 64 of each.
    ///
    /// The work runs in a task of its own, so a caller that goes away (dockerd timed out, the
    /// connection dropped) never cancels a mount half-way; its queued Mount is then not
    /// counted (no holder that nobody will unmount).
    pub async fn mount(self: &Arc<Self>, name: &str, id: &str) -> Result<PathBuf> {
        self.wait_restored().await?;
        let vol = self.volume(name)?;
        let (tx, rx) = oneshot::channel();
        vol.queue_push(Waiter {
            id: id.to_string(),
            reply: tx,
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut st = vol.state.lock().await;
            // A previous holder of the lock may have served this Mount with its batch.
            if !vol.queue_is_empty() {
                me.serve_mounts(&vol, &mut st).await;
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(Error::Internal("the mount did not finish".into())))
    }

    /// Serve every queued Mount of `vol` (the caller holds its lock and is in the queue).
    async fn serve_mounts(&self, vol: &Volume, st: &mut VolState) {
        let reply_all = |batch: Vec<Waiter>, r: &Result<PathBuf>| {
            for w in batch {
                let _ = w.reply.send(r.clone());
            }
        };
        if st.removed {
            reply_all(
                vol.queue_take(),
                &Err(Error::NoSuchVolume(vol.name.clone())),
            );
            return;
        }
        if st.mounted && self.mounter.health(&vol.target) == Health::Stale {
            tracing::warn!(volume = %vol.name, "mount is stale (its s3fs is gone); mounting again");
            crate::metrics::repaired();
            self.unmount_now(vol, st).await;
        }
        let mounted_here = !st.mounted;
        if mounted_here {
            if let Err(e) = self.mount_now(vol, st).await {
                // Everyone who queued while the attempt ran shares its outcome.
                reply_all(vol.queue_take(), &Err(e));
                return;
            }
        }
        let mut batch = vol.queue_take();
        // A caller that went away while waiting is not counted: nobody would unmount it.
        batch.retain(|w| {
            let here = !w.reply.is_closed();
            if !here {
                tracing::info!(volume = %vol.name, id = %w.id, "the caller of a Mount went away before it was served; not counted");
            }
            here
        });
        if batch.is_empty() {
            if mounted_here && st.holders.is_empty() {
                self.unmount_now(vol, st).await;
            }
            return;
        }
        for w in &batch {
            *st.holders.entry(w.id.clone()).or_insert(0) += 1;
        }
        if let Some(pending) = st.pending_release.take() {
            pending.abort();
        }
        if let Err(e) = self.persist(&vol.name, Some(vol.record(st)), false) {
            crate::metrics::mount_failed(&e);
            for w in &batch {
                decrement(&mut st.holders, &w.id);
            }
            if mounted_here {
                self.unmount_now(vol, st).await;
            }
            vol.publish(st);
            reply_all(batch, &Err(e));
            return;
        }
        vol.publish(st);
        let mut gone = Vec::new();
        for w in batch {
            if w.reply.send(Ok(vol.target.clone())).is_err() {
                gone.push(w.id);
            }
        }
        if !gone.is_empty() {
            // Went away in the last instant: take its count back.
            for id in &gone {
                tracing::info!(volume = %vol.name, id = %id, "the caller of a Mount went away before its answer; not counted");
                decrement(&mut st.holders, id);
            }
            if let Err(e) = self.persist(&vol.name, Some(vol.record(st)), false) {
                tracing::warn!(volume = %vol.name, error = %e, "could not save dropping a gone caller's Mount");
            }
            vol.publish(st);
        }
    }

    async fn mount_now(&self, vol: &Volume, st: &mut VolState) -> Result<()> {
        let result = match self.spec(vol) {
            Ok(spec) => self
                .mounter
                .mount(&spec)
                .await
                .map_err(|source| Error::Mount {
                    name: vol.name.clone(),
                    source,
                }),
            Err(e) => Err(e),
        };
        let result = result.map(|shared| st.shared = Some(shared));
        match &result {
            Ok(()) => {
                st.mounted = true;
                st.last_failure = None;
                tracing::info!(volume = %vol.name, target = %vol.target.display(), "mounted");
            }
            Err(e) => {
                crate::metrics::mount_failed(e);
                st.last_failure = Some(e.clone());
                tracing::warn!(volume = %vol.name, error = %e, "mount failed");
            }
        }
        vol.publish(st);
        result
    }

    async fn unmount_now(&self, vol: &Volume, st: &mut VolState) {
        if let Some(pending) = st.pending_release.take() {
            pending.abort();
        }
        if let Err(e) = self.mounter.unmount(&vol.target).await {
            tracing::warn!(volume = %vol.name, error = %e, "unmount");
        }
        st.mounted = false;
        st.shared = None;
        tracing::info!(volume = %vol.name, "unmounted");
        vol.publish(st);
    }

    /// `/VolumeDriver.Unmount`: uncount one Mount of `id`; the last holder unmounts (after
    /// `--unmount-delay`). An unknown ID or volume is a success that changes nothing: Docker
    /// may repeat Unmounts after its own crash.
    pub async fn unmount(self: &Arc<Self>, name: &str, id: &str) -> Result<()> {
        self.wait_restored().await?;
        let Ok(vol) = self.volume(name) else {
            tracing::info!(
                volume = name,
                id,
                "unmount of an unknown volume: nothing to do"
            );
            return Ok(());
        };
        let mut st = vol.state.lock().await;
        if st.removed || !st.holders.contains_key(id) {
            tracing::info!(
                volume = name,
                id,
                "unmount by an ID that holds nothing: nothing to do"
            );
            return Ok(());
        }
        decrement(&mut st.holders, id);
        if let Err(e) = self.persist(name, Some(vol.record(&st)), false) {
            *st.holders.entry(id.to_string()).or_insert(0) += 1;
            return Err(e);
        }
        if st.holders.is_empty() && st.mounted {
            let delay = self.settings.unmount_delay;
            if delay.is_zero() || self.shutting_down.load(Ordering::Acquire) {
                self.unmount_now(&vol, &mut st).await;
            } else {
                let me = Arc::clone(self);
                let v = Arc::clone(&vol);
                let task = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut st = v.state.lock().await;
                    st.pending_release = None;
                    if st.holders.is_empty() && st.mounted && !st.removed {
                        me.unmount_now(&v, &mut st).await;
                    }
                });
                if let Some(old) = st.pending_release.replace(task.abort_handle()) {
                    old.abort();
                }
            }
        }
        vol.publish(&st);
        Ok(())
    }

    /// `/VolumeDriver.Path`: the mount point while mounted, else empty.
    pub fn path(&self, name: &str) -> Result<String> {
        let vol = self.volume(name)?;
        let view = vol.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(if view.mounted {
            vol.target.display().to_string()
        } else {
            String::new()
        })
    }

    /// `/VolumeDriver.Get`: from memory, whether or not the object store answers.
    pub fn get(&self, name: &str) -> Result<VolumeInfo> {
        let vol = self.volume(name)?;
        Ok(self.info(&vol))
    }

    /// Changes with everything [`Driver::list_entries`] shows; read it before building a List
    /// reply and keep the reply for as long as it stays the same.
    pub fn list_generation(&self) -> u64 {
        self.list_gen.load(Ordering::Acquire)
    }

    /// `/VolumeDriver.List`, sorted by name: names, mount points and creation times only.
    /// `Status` is Get's (`docker volume inspect`); leaving it out keeps List cheap with
    /// thousands of volumes (Backend.AI lists at every kernel start).
    pub fn list_entries(&self) -> Vec<VolumeEntry> {
        let mut v: Vec<VolumeEntry> = self
            .volumes
            .iter()
            .map(|e| {
                let vol = e.value();
                let mounted = vol.view.lock().unwrap_or_else(|e| e.into_inner()).mounted;
                VolumeEntry {
                    name: vol.name.clone(),
                    mountpoint: if mounted {
                        vol.target.display().to_string()
                    } else {
                        String::new()
                    },
                    created_at: vol.created_at.clone(),
                }
            })
            .collect();
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every volume with its full status, sorted by name (for metrics and tests).
    pub fn list(&self) -> Vec<VolumeInfo> {
        let backends = self.backends.current();
        let mut v: Vec<VolumeInfo> = self
            .volumes
            .iter()
            .map(|e| self.info_with(e.value(), &backends))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn info(&self, vol: &Volume) -> VolumeInfo {
        self.info_with(vol, &self.backends.current())
    }

    fn info_with(&self, vol: &Volume, backends: &BTreeMap<String, Backend>) -> VolumeInfo {
        let view = vol.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let health = if view.mounted {
            match self.mounter.health(&vol.target) {
                Health::NotMounted => Health::Stale,
                h => h,
            }
        } else {
            Health::NotMounted
        };
        let (settings, problem) = match &vol.options {
            Ok(o) => (
                Shown::Parsed(o.clone()),
                (!backends.contains_key(&o.backend)).then(|| Problem::NoBackend {
                    backend: o.backend.clone(),
                    path: self.backends.path().display().to_string(),
                    file_problem: self.backends.problem(),
                }),
            ),
            Err(refused) => (
                Shown::Refused(vol.raw.clone()),
                Some(Problem::Refused(refused.clone())),
            ),
        };
        let status = VolumeStatus {
            settings,
            mounted: view.mounted,
            holders: view.holders,
            health,
            since: view.since,
            last_error: view.last_error,
            problem,
        };
        VolumeInfo {
            name: vol.name.clone(),
            mountpoint: if view.mounted {
                vol.target.display().to_string()
            } else {
                String::new()
            },
            created_at: vol.created_at.clone(),
            status,
        }
    }

    /// After a start: re-adopt live mounts of held volumes, clear what earlier runs left, then
    /// mount again what should be mounted but is not. Runs in the background while the socket
    /// already answers; Mount, Unmount and Remove wait for it.
    ///
    /// Adoption needs only the state and the mount table: a volume whose backend is gone, whose
    /// backends file is broken or whose stored options this version refuses keeps its live
    /// mount and its holders. Nothing a held volume uses is swept, whatever state it is in.
    pub async fn restore(self: &Arc<Self>) {
        // However this ends (a panic included), Mount, Unmount and Remove stop waiting.
        struct Finished<'a>(&'a watch::Sender<bool>);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                let _ = self.0.send(true);
            }
        }
        let _finished = Finished(&self.restored_tx);
        let vols: Vec<Arc<Volume>> = self.volumes.iter().map(|e| e.value().clone()).collect();
        let mut to_mount = Vec::new();
        let mut keep = Vec::new();
        for vol in &vols {
            let mut st = vol.state.lock().await;
            if st.holders.is_empty() {
                continue;
            }
            keep.push(vol.target.clone());
            match self.mounter.adopt(&vol.target, st.shared.as_deref()).await {
                Adoption::Live { shared } => {
                    crate::metrics::adopted();
                    st.mounted = true;
                    if st.shared.as_deref() != Some(shared.as_str()) {
                        st.shared = Some(shared);
                        if let Err(e) = self.persist(&vol.name, Some(vol.record(&st)), false) {
                            tracing::warn!(volume = %vol.name, error = %e, "could not save the adopted mount's name");
                        }
                    }
                    vol.publish(&st);
                }
                found => {
                    tracing::info!(volume = %vol.name, ?found, "held volume has no live mount; mounting it again");
                    to_mount.push(vol.clone());
                }
            }
        }
        self.mounter.sweep(&keep).await;
        let mut tasks = tokio::task::JoinSet::new();
        for vol in to_mount {
            let me = Arc::clone(self);
            tasks.spawn(async move {
                let mut st = vol.state.lock().await;
                if let Err(e) = me.mount_now(&vol, &mut st).await {
                    tracing::error!(volume = %vol.name, error = %e, "could not restore the mount of a held volume; the next Mount tries again");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!(volumes = vols.len(), "restore finished");
    }

    /// Waits until restore has finished (the health loop must not repair what restore is
    /// still adopting).
    pub async fn restored(&self) {
        let mut rx = self.restored.clone();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// One round of the periodic health check: a held volume whose mount died is mounted
    /// again, so that the next container gets a working mount. Only a dead mount (its s3fs
    /// gone, its FUSE connection gone) is touched; a slow one is shown as `slow` and left
    /// alone. Probes run side by side, so one wedged s3fs does not hold up the others.
    pub async fn check_health(self: &Arc<Self>) {
        let mut probes = tokio::task::JoinSet::new();
        for vol in self.volumes.iter().map(|e| e.value().clone()) {
            if !vol.view.lock().unwrap_or_else(|e| e.into_inner()).mounted {
                continue;
            }
            let me = Arc::clone(self);
            probes.spawn(async move {
                if me.mounter.probe(&vol.target).await != Health::Stale {
                    return;
                }
                let mut st = vol.state.lock().await;
                if !st.mounted || st.removed {
                    return;
                }
                tracing::warn!(volume = %vol.name, "health check: mount is stale; mounting again");
                me.unmount_now(&vol, &mut st).await;
                if !st.holders.is_empty() {
                    crate::metrics::repaired();
                    let _ = me.mount_now(&vol, &mut st).await;
                }
            });
        }
        while probes.join_next().await.is_some() {}
    }

    /// On SIGTERM: refuse new Mounts, and end pending delayed unmounts now. Mounts that
    /// containers hold are left alone.
    ///
    /// A volume busy with a call (a Mount waiting on a wedged s3fs) is skipped rather than
    /// waited for: shutdown must not hang on one bucket.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let vols: Vec<Arc<Volume>> = self.volumes.iter().map(|e| e.value().clone()).collect();
        for vol in vols {
            let Ok(mut st) = vol.state.try_lock() else {
                tracing::info!(volume = %vol.name, "busy at shutdown; left as it is");
                continue;
            };
            if st.mounted && st.holders.is_empty() {
                self.unmount_now(&vol, &mut st).await;
            }
        }
    }

    /// Why the backends file on disk is not in use, if it is not (for the start-up log).
    pub fn backends_problem(&self) -> Option<String> {
        self.backends.problem()
    }
}

fn decrement(holders: &mut BTreeMap<String, u64>, id: &str) {
    if let Some(n) = holders.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            holders.remove(id);
        }
    }
}

fn same_or_conflict(existing: &Volume, options: &VolumeOptions) -> Result<()> {
    match &existing.options {
        Ok(o) if o == options => Ok(()),
        Ok(o) => Err(Error::Conflict {
            name: existing.name.clone(),
            differences: o.differences(options),
        }),
        Err(refused) => Err(Error::Unresolvable {
            name: existing.name.clone(),
            refused: refused.clone(),
        }),
    }
}

#[cfg(test)]
mod tests;
