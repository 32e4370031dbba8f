//! tailsrv streams one growing file to many TCP clients: `tail -f` as a server.
//!
//! ```text
//!                 inotify            doorbell (per shard: growth eventfd + bounded channel)
//!   FILE ───────────────────▶ watcher ──────────────┬──────────────┬─────────────▶ …
//!     │                  (own executor,             ▼              ▼
//!     │                   sleeps in poll)       shard 0        shard 1          (one executor
//!     │                                        listener        listener          per core,
//!     │                                         clients         clients          SO_REUSEPORT)
//!     └──────── sendfile: page cache ──────────▶ sockets        sockets
//! ```
//!
//! - `watcher`: owns the inotify watch on FILE and its directory, and waits on the stop
//!   flag. It publishes the file's generation (the open file, its identity and size) and
//!   the server's phase in `Published`, and rings the doorbells of the shards that have
//!   clients waiting for growth, never waiting on a shard. When FILE is rotated or
//!   truncated it opens what FILE is now and publishes it as a new generation
//!   (`watcher::rotation`).
//! - `state`: what the watcher and the shards share: `Published`, its `Generation`s, and the
//!   doorbells. Each client holds the generation it reads, so a rotated file stays open
//!   until its last client ends.
//! - `accept`: one glommio executor per core runs a shard's accept loop on its own listener
//!   on the shared port: it starts the shard, admits each connection and hands it to a
//!   client task, and winds the shard down at the end.
//! - `shard`: what a shard's clients share: the size and phase as the shard knows them, who
//!   waits for what, and the wake-ups. It answers the doorbell by waking (or sending straight
//!   to) the clients waiting for the file to grow; `shard::slot` is each client's place,
//!   and the set of full sockets that wakes a client when its socket drains.
//! - `pace`: how much one client is sent at a time, and how a task takes turns.
//! - `admission`: what every shard asks about a connection it accepts, before reading
//!   from it: `--allow` (`cidr`), `--max-clients`, `--max-clients-per-ip`; and warnings about
//!   refused connections and failed accepts that cannot flood the log (`ratelimit`).
//! - `client`: one task per connection: reads its request (`request`: the header, parsed by
//!   `header`, or, when the first bytes are an HTTP request line, the request head, parsed
//!   and routed by `http`), answers HTTP (`answer`), then moves file bytes to the socket with
//!   sendfile ([`sys`]), waiting on a full socket without holding up anyone else. A line-counted start (`nN`, `?lines=N`) is found by
//!   `lines`, reading backwards from the end on the shard's blocking thread. A browser
//!   asking for `/` gets the web page (`web`: one HTML file in the binary), which follows
//!   `/stream` with `fetch()`.
//!
//! Data flows one way between them: `server` → `accept` → `client` (→ `request`, `answer`) →
//! `shard` → `pace`, with `state` shared by the watcher and the shards; no module imports one
//! that imports it.
//!
//! - `server`: [`Server::bind`] wires it together and returns once every shard accepts;
//!   [`Server::serve`] runs it until a shutdown future resolves, and a [`Handle`] reads its
//!   state or stops it from any thread. Tests run whole servers in-process this way.
//! - [`process`]: what only `main` does, for the whole process: the signal mask and resource
//!   limits. `main.rs` adds option parsing and logging.
//! - [`fetch`]: the `tailsrv-fetch` client, a binary of its own (`src/bin/tailsrv-fetch.rs`):
//!   it resumes after disconnects, checks for rotations and keeps the copy a relay serves.
//!   The server does not use it.
//!
//! What is public is what the binary, the tests and the bench use: [`Server`] and [`Handle`]
//! with their [`cli::Options`] (and its [`addr`] and [`Cidr`] types), [`Error`] and
//! [`Outcome`], [`FileId`] and [`Rotation`]; [`process`] for `main`; and
//! [`sys`], whose safe system-call wrappers the bench builds its reference server from.
//! Everything else is `pub(crate)` and may change freely.

// Why deny and not forbid? src/sys.rs allows unsafe code: every system call lives there, each
// with a SAFETY note (clippy's undocumented_unsafe_blocks checks those). One function beside
// it allows it too, `Slot::direct_socket` in src/shard/slot.rs: the shard borrows a waiting
// client's socket by its raw descriptor, which only the type that owns both can vouch for.
#![deny(unsafe_code)]

pub(crate) mod accept;
pub mod addr;
pub(crate) mod admission;
pub(crate) mod answer;
pub(crate) mod cidr;
pub mod cli;
pub(crate) mod client;
pub(crate) mod control;
pub mod error;
pub mod fetch;
pub(crate) mod file_id;
pub(crate) mod handle;
pub(crate) mod header;
pub(crate) mod http;
pub(crate) mod lines;
pub(crate) mod linger;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod pace;
pub mod process;
pub(crate) mod ratelimit;
pub(crate) mod request;
mod server;
pub(crate) mod shard;
pub(crate) mod state;
pub(crate) mod stats;
pub mod sys;
pub(crate) mod systemd;
pub(crate) mod watcher;
pub(crate) mod web;

pub use cidr::Cidr;
pub use error::{Error, Outcome};
pub use file_id::FileId;
pub use handle::{Handle, Streaming};
pub use server::Server;
pub use stats::Rotation;
