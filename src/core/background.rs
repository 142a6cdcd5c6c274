//! The background thread of a mount: sends the kernel the name
//! invalidations the overlay asks for (never from a request's own thread,
//! see `notify`),
//! gives memory back once a burst of forgets pauses, and keeps the
//! descriptor budget (see `fdbudget`).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::fdbudget::{self, DirUse};
use super::inodes::ROOT_INO;
use super::notify::{Invalidate, KernelCache};
use super::overlay::Overlay;

/// How long the forgets must pause before memory is given back.
const TRIM_DELAY: Duration = Duration::from_millis(200);

/// Start the background thread of `overlay`, talking to the kernel through
/// `cache`. Only the first call starts one.
pub(crate) fn start(overlay: &Arc<Overlay>, cache: impl KernelCache) {
    let (tx, rx) = mpsc::channel::<Invalidate>();
    if overlay.background.set(tx).is_err() {
        return;
    }
    let cache = Arc::new(cache);
    let _ = overlay.kernel.set(cache.clone());
    let me = Arc::downgrade(overlay);
    let spawned = std::thread::Builder::new()
        .name("stratafs-bg".into())
        .spawn(move || serve(&me, &rx, &*cache));
    if let Err(e) = spawned {
        log::warn!("no background thread (kernel cache invalidation): {e}");
    }
}

fn serve(me: &Weak<Overlay>, rx: &mpsc::Receiver<Invalidate>, cache: &impl KernelCache) {
    let mut trim_at: Option<Instant> = None;
    loop {
        let what = match trim_at {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
        };
        match what {
            Ok(Invalidate::Attr(ino)) => cache.drop_attrs(ino),
            Ok(Invalidate::FdCheck) => {
                if let Some(ov) = me.upgrade() {
                    for d in dirs_to_drop(&ov) {
                        cache.drop_entry(d.parent, &d.name);
                    }
                }
            }
            // Wait until the forgets pause.
            Ok(Invalidate::Trim) => trim_at = Some(Instant::now() + TRIM_DELAY),
            Err(RecvTimeoutError::Timeout) => {
                trim_at = None;
                if let Some(ov) = me.upgrade() {
                    ov.inodes.give_back();
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// The directories the kernel should drop from its cache now (oldest
/// first), or none while the descriptors are within budget.
fn dirs_to_drop(ov: &Overlay) -> Vec<DirUse> {
    let open = fdbudget::open_fds();
    let dirs = ov
        .inodes
        .dir_nodes()
        .into_iter()
        .filter(|n| n.ino != ROOT_INO)
        .filter_map(|n| {
            let fds = n.held_fds();
            let st = n.state.read();
            (!st.detached()).then(|| DirUse {
                parent: st.parent(),
                name: st.name().clone(),
                used: n.last_used(),
                fds,
            })
        })
        .collect();
    let out = fdbudget::to_drop(ov.fd_budget, open, fdbudget::now_ms(), dirs);
    if !out.is_empty() {
        log::debug!(
            "{open} descriptors open (budget {}): dropping {} directories from the kernel cache",
            ov.fd_budget,
            out.len()
        );
    }
    out
}
