//! systemd side jobs on the watcher's executor: a STATUS= line kept current, and watchdog
//! pings sent only while every shard answers. The notification protocol is in
//! [`crate::notify`].

use crate::control::View;
use crate::notify::Notifier;
use crate::state::Bells;
use futures_lite::future;
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::timer::Timer;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use tracing::warn;

/// Keeps systemd's STATUS= current: updated when clients come or go, at most once a second,
/// and never when nothing changes.
pub async fn keep_status(notifier: Notifier, view: Rc<View>, changes: Vec<ConnectedReceiver<()>>) {
    let changed = Rc::new(Cell::new(false));
    let waiter: Rc<Cell<Option<std::task::Waker>>> = Rc::default();
    for rx in changes {
        let (changed, waiter) = (changed.clone(), waiter.clone());
        glommio::spawn_local(async move {
            while rx.recv().await.is_some() {
                changed.set(true);
                if let Some(w) = waiter.take() {
                    w.wake();
                }
            }
        })
        .detach();
    }
    loop {
        future::poll_fn(|cx| {
            if changed.replace(false) {
                return std::task::Poll::Ready(());
            }
            waiter.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await;
        notifier.status(&view.status());
        Timer::new(Duration::from_secs(1)).await;
    }
}

/// Pings systemd's watchdog at half the interval, but only while every shard answers.
pub async fn keep_watchdog(
    notifier: Notifier,
    interval: Duration,
    view: Rc<View>,
    bells: Rc<Bells>,
) {
    let period = interval / 2;
    loop {
        // Why ask the shards? A ping from the watcher alone would only prove the watcher
        // runs; a shard stuck in a loop would go unnoticed. Each shard answers from its
        // own thread, so no answer means no ping, and systemd restarts us.
        if view.refresh(&bells, period / 2).await {
            notifier.watchdog();
        } else {
            let stuck: Vec<usize> = (0..view.stats.len())
                .filter(|&i| !view.stats[i].heartbeat.answered())
                .collect();
            warn!(
                ?stuck,
                "shards not answering; withholding the watchdog ping"
            );
        }
        Timer::new(period).await;
    }
}
