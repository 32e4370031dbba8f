//! tailsrv's integration tests: one test binary, so the helpers in `common` compile once.
//!
//! Each module drives the real `tailsrv` binary on port 0 against a temp file, except
//! `inprocess`, which runs servers inside the test process through `tailsrv::Server`.

mod common;

mod addresses;
mod docs;
mod inprocess;
mod lifecycle;
mod load;
mod metrics;
mod ops;
mod protocol;
