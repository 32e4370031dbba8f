//! systemd integration: readiness, status, stopping and watchdog notifications.
//!
//! Compiled to no-ops unless the `sd-notify` feature is on, and inert unless systemd (or a
//! test standing in for it) set NOTIFY_SOCKET.

use std::time::Duration;

/// Talks to the service manager, if there is one.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier for NOTIFY_SOCKET, when the feature is built in and the variable is set.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: cfg!(feature = "sd-notify") && std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn enabled(self) -> bool {
        self.enabled
    }

    /// READY=1 with a first status line.
    pub fn ready(self, status: &str) {
        self.send(&[State::Ready, State::Status(status)]);
    }

    pub fn status(self, status: &str) {
        self.send(&[State::Status(status)]);
    }

    pub fn stopping(self, status: &str) {
        self.send(&[State::Stopping, State::Status(status)]);
    }

    pub fn watchdog(self) {
        self.send(&[State::Watchdog]);
    }

    /// The watchdog interval the unit asked for (WatchdogSec=), if any.
    pub fn watchdog_interval(self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        watchdog_usec().map(Duration::from_micros)
    }

    fn send(self, states: &[State]) {
        if self.enabled {
            if let Err(e) = send(states) {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }
    }
}

#[cfg_attr(not(feature = "sd-notify"), allow(dead_code))]
enum State<'a> {
    Ready,
    Stopping,
    Watchdog,
    Status(&'a str),
}

#[cfg(feature = "sd-notify")]
fn send(states: &[State]) -> std::io::Result<()> {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState> = states
        .iter()
        .map(|s| match s {
            State::Ready => NotifyState::Ready,
            State::Stopping => NotifyState::Stopping,
            State::Watchdog => NotifyState::Watchdog,
            State::Status(text) => NotifyState::Status(text),
        })
        .collect();
    sd_notify::notify(false, &states)
}

#[cfg(not(feature = "sd-notify"))]
fn send(_: &[State]) -> std::io::Result<()> {
    Ok(())
}

#[cfg(feature = "sd-notify")]
fn watchdog_usec() -> Option<u64> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then_some(usec)
}

#[cfg(not(feature = "sd-notify"))]
fn watchdog_usec() -> Option<u64> {
    None
}
