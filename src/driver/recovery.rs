//! Recovery: at start, adopting the live mounts of held volumes, sweeping what earlier runs
//! left and mounting again what should be mounted; while running, finding dead mounts and
//! mounting them again.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::table::Volume;
use super::Driver;
use crate::mounter::{Adoption, Health, Mounter};

impl<M: Mounter> Driver<M> {
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
        let vols = self.all_volumes();
        let mut to_mount = Vec::new();
        let mut keep = Vec::new();
        for vol in &vols {
            if let Some(target) = self.adopt(vol, &mut to_mount).await {
                keep.push(target);
            }
        }
        self.mounter.sweep(&keep).await;
        self.remount_all(to_mount).await;
        tracing::info!(volumes = vols.len(), "restore finished");
    }

    /// Take over the live mount of `vol` if it is held, or put it on `to_mount` when its mount
    /// is gone. Returns the mount point the sweep must keep, `None` for a volume nobody holds.
    async fn adopt(&self, vol: &Arc<Volume>, to_mount: &mut Vec<Arc<Volume>>) -> Option<PathBuf> {
        let mut st = vol.state.lock().await;
        if st.holders.is_empty() {
            return None;
        }
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
        Some(vol.target.clone())
    }

    /// Mount the held volumes whose mounts were gone at start, side by side.
    async fn remount_all(self: &Arc<Self>, vols: Vec<Arc<Volume>>) {
        let mut tasks = tokio::task::JoinSet::new();
        for vol in vols {
            let me = Arc::clone(self);
            tasks.spawn(async move {
                let mut st = vol.state.lock().await;
                if let Err(e) = me.mount_now(&vol, &mut st).await {
                    tracing::error!(volume = %vol.name, error = %e, "could not restore the mount of a held volume; the next Mount tries again");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
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
        for vol in self.all_volumes() {
            if !vol.is_mounted() {
                continue;
            }
            let me = Arc::clone(self);
            probes.spawn(async move { me.repair_if_dead(&vol).await });
        }
        while probes.join_next().await.is_some() {}
    }

    /// Probe `vol`'s mount; a dead one is taken down and, while held, mounted again.
    async fn repair_if_dead(&self, vol: &Volume) {
        if self.mounter.probe(&vol.target).await != Health::Stale {
            return;
        }
        let mut st = vol.state.lock().await;
        if !st.mounted || st.removed {
            return;
        }
        tracing::warn!(volume = %vol.name, "health check: mount is stale; mounting again");
        self.unmount_now(vol, &mut st).await;
        if !st.holders.is_empty() {
            crate::metrics::repaired();
            let _ = self.mount_now(vol, &mut st).await;
        }
    }
}
