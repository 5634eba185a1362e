//! Mount and Unmount: counting holders, serving queued Mounts as one batch, the unmount delay,
//! and ending pending delayed unmounts at shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::table::{Outcome, VolState, Volume, Waiter};
use super::Driver;
use crate::error::{Error, Result};
use crate::mounter::{Health, Mounter};

impl<M: Mounter> Driver<M> {
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
        match rx.await {
            Ok(outcome) => outcome.map_err(Error::from_shared),
            Err(closed) => Err(Error::MountUnfinished(closed)),
        }
    }

    /// Serve every queued Mount of `vol` (the caller holds its lock and is in the queue).
    async fn serve_mounts(&self, vol: &Volume, st: &mut VolState) {
        if st.removed {
            let gone = Arc::new(Error::NoSuchVolume(vol.name.clone()));
            reply_all(vol.queue_take(), &Err(gone));
            return;
        }
        self.repair_if_stale(vol, st).await;
        let mounted_here = !st.mounted;
        if mounted_here {
            if let Err(e) = self.mount_now(vol, st).await {
                // Everyone who queued while the attempt ran shares its outcome.
                reply_all(vol.queue_take(), &Err(e));
                return;
            }
        }
        let batch = still_waiting(vol, vol.queue_take());
        if batch.is_empty() {
            if mounted_here && st.holders.is_empty() {
                self.unmount_now(vol, st).await;
            }
            return;
        }
        if let Err(e) = self.hold(vol, st, &batch, mounted_here).await {
            reply_all(batch, &Err(Arc::new(e)));
            return;
        }
        self.answer(vol, st, batch);
    }

    /// A mount whose s3fs is gone is taken down, so that the batch mounts it again.
    async fn repair_if_stale(&self, vol: &Volume, st: &mut VolState) {
        if st.mounted && self.mounter.health(&vol.target) == Health::Stale {
            tracing::warn!(volume = %vol.name, "mount is stale (its s3fs is gone); mounting again");
            crate::metrics::repaired();
            self.unmount_now(vol, st).await;
        }
    }

    /// Count the batch's holders and save them, in one write. When the write fails the counts
    /// are taken back, and a mount made for this batch is undone.
    async fn hold(
        &self,
        vol: &Volume,
        st: &mut VolState,
        batch: &[Waiter],
        mounted_here: bool,
    ) -> Result<()> {
        st.add_holders(batch.iter().map(|w| w.id.as_str()));
        st.cancel_release();
        let saved = self.persist(&vol.name, Some(vol.record(st)), false);
        if let Err(e) = &saved {
            crate::metrics::mount_failed(e);
            for w in batch {
                st.drop_holder(&w.id);
            }
            if mounted_here {
                self.unmount_now(vol, st).await;
            }
        }
        vol.publish(st);
        saved
    }

    /// Answer the counted batch with the mount point; a caller that went away in the last
    /// instant is uncounted again.
    fn answer(&self, vol: &Volume, st: &mut VolState, batch: Vec<Waiter>) {
        let mut gone = Vec::new();
        for w in batch {
            if w.reply.send(Ok(vol.target.clone())).is_err() {
                gone.push(w.id);
            }
        }
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            tracing::info!(volume = %vol.name, id = %id, "the caller of a Mount went away before its answer; not counted");
            st.drop_holder(id);
        }
        if let Err(e) = self.persist(&vol.name, Some(vol.record(st)), false) {
            tracing::warn!(volume = %vol.name, error = %e, "could not save dropping a gone caller's Mount");
        }
        vol.publish(st);
    }

    /// Mount `vol` now (its lock held), noting the outcome for Get; a failure is shared by
    /// Get and every caller the attempt was made for.
    pub(super) async fn mount_now(
        &self,
        vol: &Volume,
        st: &mut VolState,
    ) -> std::result::Result<(), Arc<Error>> {
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
        let result = match result {
            Ok(shared) => {
                st.shared = Some(shared);
                st.mounted = true;
                st.last_failure = None;
                tracing::info!(volume = %vol.name, target = %vol.target.display(), "mounted");
                Ok(())
            }
            Err(e) => {
                crate::metrics::mount_failed(&e);
                let e = Arc::new(e);
                st.last_failure = Some(Arc::clone(&e));
                tracing::warn!(volume = %vol.name, error = %e, "mount failed");
                Err(e)
            }
        };
        vol.publish(st);
        result
    }

    /// Unmount `vol` now (its lock held), ending a pending delayed unmount first.
    pub(super) async fn unmount_now(&self, vol: &Volume, st: &mut VolState) {
        st.cancel_release();
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
        st.drop_holder(id);
        if let Err(e) = self.persist(name, Some(vol.record(&st)), false) {
            st.add_holders([id]);
            return Err(e);
        }
        if st.holders.is_empty() && st.mounted {
            self.release(&vol, &mut st).await;
        }
        vol.publish(&st);
        Ok(())
    }

    /// The last holder left: unmount now, or after `--unmount-delay` unless a new holder,
    /// Remove or shutdown comes first.
    async fn release(self: &Arc<Self>, vol: &Arc<Volume>, st: &mut VolState) {
        let delay = self.settings.unmount_delay;
        if delay.is_zero() || self.shutting_down.load(Ordering::Acquire) {
            self.unmount_now(vol, st).await;
            return;
        }
        let me = Arc::clone(self);
        let v = Arc::clone(vol);
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

    /// On SIGTERM: refuse new Mounts, and end pending delayed unmounts now. Mounts that
    /// containers hold are left alone.
    ///
    /// A volume busy with a call (a Mount waiting on a wedged s3fs) is skipped rather than
    /// waited for: shutdown must not hang on one bucket.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for vol in self.all_volumes() {
            let Ok(mut st) = vol.state.try_lock() else {
                tracing::info!(volume = %vol.name, "busy at shutdown; left as it is");
                continue;
            };
            if st.mounted && st.holders.is_empty() {
                self.unmount_now(&vol, &mut st).await;
            }
        }
    }
}

/// Give every caller in `batch` the same answer.
fn reply_all(batch: Vec<Waiter>, r: &Outcome) {
    for w in batch {
        let _ = w.reply.send(r.clone());
    }
}

/// The callers of `batch` still waiting: one that went away is not counted, since nobody
/// would unmount it.
fn still_waiting(vol: &Volume, mut batch: Vec<Waiter>) -> Vec<Waiter> {
    batch.retain(|w| {
        let here = !w.reply.is_closed();
        if !here {
            tracing::info!(volume = %vol.name, id = %w.id, "the caller of a Mount went away before it was served; not counted");
        }
        here
    });
    batch
}
