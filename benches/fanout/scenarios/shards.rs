//! Shards: catch-up and live again, against tailsrv with one shard and with two, to show
//! what the second core buys.

use super::{catchup, live, Bench};
use crate::server::Target;

/// Catch-up (`shards_catchup`) then live (`shards_live`) against the shard targets.
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let clients = b.s.shard_catchup_clients.clone();
    let r = b.catchup(targets, &clients);
    let name = if b.s.verify {
        "shards_catchup"
    } else {
        "shards_catchup_discard"
    };
    let ok = b.finish(name, "shards: catch-up", &r, catchup::table(&r))?;
    let clients = b.s.shard_live_clients.clone();
    let r = b.live(targets, &clients, &[0]);
    Ok(b.finish("shards_live", "shards: live", &r, live::table(&r))? && ok)
}
