//! The volume table's entries: a volume's record as stored, its holders per caller ID behind
//! the volume's lock, the snapshot Get and List read without that lock, and the queue of
//! Mounts waiting for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::error::Error;
use crate::options::{OptionError, VolumeOptions};
use crate::state::VolumeRecord;

/// The part of a volume that changes, guarded by the volume's lock.
#[derive(Debug, Default)]
pub(super) struct VolState {
    pub(super) holders: BTreeMap<String, u64>,
    pub(super) mounted: bool,
    pub(super) removed: bool,
    /// The last failed mount attempt, for Status (shared with the callers it was given to).
    pub(super) last_failure: Option<Arc<Error>>,
    /// The delayed unmount waiting out `--unmount-delay` after the last holder left; a new
    /// holder, Remove or shutdown cancels it. Only code holding this state aborts it, so it is
    /// never cut off half-way through its unmount (it takes the same lock first).
    pub(super) pending_release: Option<tokio::task::AbortHandle>,
    /// The shared mount the live mount is a view of (persisted, for restore).
    pub(super) shared: Option<String>,
}

impl VolState {
    /// Count one more Mount of each of `ids`.
    pub(super) fn add_holders<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            *self.holders.entry(id.to_string()).or_insert(0) += 1;
        }
    }

    /// Uncount one Mount of `id`; an ID whose count reaches zero holds nothing any more.
    pub(super) fn drop_holder(&mut self, id: &str) {
        if let Some(n) = self.holders.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.holders.remove(id);
            }
        }
    }

    /// End the wait of a delayed unmount, if one is pending.
    pub(super) fn cancel_release(&mut self) {
        if let Some(pending) = self.pending_release.take() {
            pending.abort();
        }
    }
}

/// A copy of the volume's state for Get/List, updated under the volume's lock.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) holders: u64,
    pub(super) mounted: bool,
    pub(super) since: SystemTime,
    pub(super) last_error: Option<Arc<Error>>,
}

/// A Mount's answer, which all the callers served by one attempt share.
pub(super) type Outcome = std::result::Result<PathBuf, Arc<Error>>;

/// One queued Mount: the caller's ID and where its answer goes.
pub(super) struct Waiter {
    pub(super) id: String,
    pub(super) reply: oneshot::Sender<Outcome>,
}

/// One volume of the table.
pub(super) struct Volume {
    pub(super) name: String,
    /// The options as stored: written back unchanged, and shown, when this version refuses
    /// them.
    pub(super) raw: BTreeMap<String, String>,
    /// The parsed options, or why this version refuses the stored ones. Such a volume stays
    /// listed, keeps its live mount and its holders, and answers their Unmounts; only a new
    /// mount of it fails, saying why.
    pub(super) options: std::result::Result<VolumeOptions, OptionError>,
    pub(super) created_at: String,
    pub(super) target: PathBuf,
    pub(super) state: tokio::sync::Mutex<VolState>,
    view: Mutex<View>,
    /// Mounts waiting to be served by whoever holds `state` (see [`super::Driver::mount`]).
    queue: Mutex<Vec<Waiter>>,
    /// The driver's List generation, bumped when this volume's mount point comes or goes.
    list_gen: Arc<AtomicU64>,
}

impl Volume {
    pub(super) fn new(
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

    /// A volume as the state file holds it, with its holders. Options this version refuses
    /// are logged and kept, never dropped (`config` names the backends file in the reason).
    pub(super) fn from_record(
        name: &str,
        rec: &VolumeRecord,
        config: &str,
        root: &Path,
        list_gen: &Arc<AtomicU64>,
    ) -> Self {
        let options = VolumeOptions::parse(name, &rec.options, config).inspect_err(|e| {
            tracing::error!(volume = %name, error = %e, "volume in the state has options this version refuses; it stays listed and keeps its live mount, but cannot be mounted anew");
        });
        let v = Volume::new(
            name,
            rec.options.clone(),
            options,
            rec.created_at.clone(),
            root,
            list_gen,
        );
        if let Ok(mut st) = v.state.try_lock() {
            st.holders = rec.holders.clone();
            st.shared = rec.shared.clone();
            v.publish(&st);
        }
        v
    }

    /// The record to store for this volume in state `st`.
    pub(super) fn record(&self, st: &VolState) -> VolumeRecord {
        VolumeRecord {
            options: self.raw.clone(),
            created_at: self.created_at.clone(),
            holders: st.holders.clone(),
            shared: st.shared.clone(),
        }
    }

    pub(super) fn queue_push(&self, w: Waiter) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }

    pub(super) fn queue_take(&self) -> Vec<Waiter> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn queue_is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The snapshot Get and List read, as last published.
    pub(super) fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the volume is mounted, by its snapshot (no wait for its lock).
    pub(super) fn is_mounted(&self) -> bool {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).mounted
    }

    /// The mount point while mounted, else empty (as the protocol shows it).
    pub(super) fn mountpoint(&self, mounted: bool) -> String {
        if mounted {
            self.target.display().to_string()
        } else {
            String::new()
        }
    }

    /// Make `st` what Get and List see.
    pub(super) fn publish(&self, st: &VolState) {
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
