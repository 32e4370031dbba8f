//! What a change of FILE means: it appeared, grew, shrank (a truncation, or copytruncate),
//! or its name now leads elsewhere or nowhere (a rotation); and what follows: a new
//! generation published, the old one drained or reset, or the watch ended.

use super::{News, Watch};
use crate::cli::OnRotation;
use crate::error::Outcome;
use crate::shard::DRAIN_GRACE;
use crate::state::{Bells, Ending, Generation, Phase, Published};
use crate::stats::Rotation;
use crate::sys;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use tracing::{debug, error, info, warn};

impl Watch {
    /// Looks at the file after events: what changed, or why to stop.
    pub(super) fn evaluate(&mut self, look_at_path: bool, dir_gone: bool) -> News {
        let Some(current) = self.current.clone() else {
            if dir_gone {
                error!(file = %self.path.display(), "the file's directory was removed; exiting");
                self.published.set_phase(Phase::Closing);
                return News::Ended(Outcome::FileGone);
            }
            match self.open() {
                Ok(id) => {
                    let size = self.published.size();
                    info!(file = %self.path.display(), %id, size, "file appeared; serving it");
                    return News::Switched(None);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %self.path.display(), error = %e, "file appeared but cannot be opened")
                }
            }
            return News::Nothing;
        };
        let st = match sys::fstat(current.file()) {
            Ok(st) => st,
            Err(e) => {
                error!(error = %e, "cannot stat the open file; exiting");
                self.published.set_phase(Phase::Closing);
                return News::Ended(Outcome::FileGone);
            }
        };
        let size = st.st_size as u64;
        let known = current.size();
        if size < known {
            self.stats.rotated(Rotation::Truncated);
            if self.on_rotation == OnRotation::Exit {
                error!(
                    file = %self.path.display(), was = known, now = size,
                    "file shrank (truncated or copytruncate-rotated); resetting all clients and exiting"
                );
                self.published.set_phase(Phase::Aborting);
                return News::Ended(Outcome::Truncated);
            }
            return self.truncated(&current, size);
        }
        let grew = size > known;
        if grew {
            current.set_size(size);
        }
        if look_at_path || dir_gone || st.st_nlink == 0 {
            // Why look at the path even when the link count is 0? `mv other FILE` unlinks
            // the file we hold just as `rm` does; what is at the path now tells them apart.
            let kind = match std::fs::metadata(&self.path) {
                Ok(m) if m.dev() == st.st_dev && m.ino() == st.st_ino && st.st_nlink > 0 => None,
                Ok(_) if st.st_nlink > 0 => Some(Rotation::Renamed),
                Ok(_) => Some(Rotation::Replaced),
                Err(_) if st.st_nlink == 0 => Some(Rotation::Deleted),
                Err(_) => Some(Rotation::Renamed),
            };
            if let Some(kind) = kind {
                self.stats.rotated(kind);
                // Why exit when the directory went, even when following? The name can only
                // come back in a directory that has it, and that is not the one watched.
                if self.on_rotation == OnRotation::Exit || dir_gone {
                    error!(
                        file = %self.path.display(), why = kind.why(), size,
                        "file is gone; clients get what it held, then tailsrv exits"
                    );
                    self.published.set_phase(Phase::Draining);
                    return News::Ended(Outcome::FileGone);
                }
                return self.rotated(current, kind);
            }
        }
        if !grew {
            return News::Nothing;
        }
        debug!(size, "file grew");
        News::Grew
    }

    /// FILE's name no longer leads to the file served: its clients drain, and whatever FILE
    /// is now (if anything) becomes the next generation.
    fn rotated(&mut self, old: Arc<Generation>, kind: Rotation) -> News {
        // Its size is final: what the writer appends to it from now on is not FILE's.
        old.end(Ending::Draining);
        self.forget_file();
        let (size, clients) = (old.size(), old.readers());
        let opened = self.open();
        let file = self.path.display();
        match opened {
            Ok(new) => info!(
                %file, why = kind.why(), old = %old.id(), %new, size, clients_draining = clients,
                "file rotated; its clients get what it held, then an orderly end; serving the new file"
            ),
            Err(e) => {
                self.published.publish(None);
                if e.kind() == io::ErrorKind::NotFound {
                    info!(
                        %file, why = kind.why(), old = %old.id(), size, clients_draining = clients,
                        "file rotated; its clients get what it held, then an orderly end; waiting for a new file"
                    );
                } else {
                    warn!(
                        %file, why = kind.why(), old = %old.id(), size, clients_draining = clients, error = %e,
                        "file rotated; the new file cannot be opened yet"
                    );
                }
            }
        }
        News::Switched(Some(Arc::downgrade(&old)))
    }

    /// The file shrank: its clients' offsets mean nothing now. They are reset, and the same
    /// file, from its new length, is the next generation.
    fn truncated(&mut self, old: &Arc<Generation>, size: u64) -> News {
        old.end(Ending::Reset);
        let new = self
            .published
            .generation(old.shared_file(), old.id().truncated(), size);
        self.current = Some(new.clone());
        self.published.publish(Some(new.clone()));
        info!(
            file = %self.path.display(), why = Rotation::Truncated.why(), old = %old.id(),
            new = %new.id(), was = old.size(), size, clients_reset = old.readers(),
            "file truncated; its clients are reset; serving it from its new length"
        );
        News::Switched(None)
    }
}

/// Ends the drain of a rotated generation: after [`DRAIN_GRACE`], its clients still
/// reading are closed.
///
/// Why a weak reference? The generation's file should close as soon as its last client
/// ends, not stay open for the grace because this timer holds it.
pub(super) async fn end_drain(
    rotated: Weak<Generation>,
    published: Arc<Published>,
    bells: Rc<Bells>,
) {
    glommio::timer::Timer::new(DRAIN_GRACE).await;
    if let Some(generation) = rotated.upgrade() {
        if generation.readers() > 0 {
            debug!(id = %generation.id(), clients = generation.readers(), "drain over; closing the rotated file's clients");
        }
        generation.end(Ending::Closed);
        drop(generation);
        published.announce();
        bells.ring_all();
    }
}
