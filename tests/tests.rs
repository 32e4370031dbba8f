//! tailsrv's integration tests: one test binary, so the helpers in `common` compile once.
//!
//! Each module drives the real `tailsrv` binary on port 0 against a temp file (`fetch`
//! drives `tailsrv-fetch` against such servers too), except `inprocess`, which runs servers
//! inside the test process through `tailsrv::Server`.

mod common;

mod addresses;
mod docs;
mod fetch;
mod fuzz;
mod inprocess;
mod lifecycle;
mod limits;
mod load;
mod metrics;
mod ops;
mod packaging;
mod protocol;
mod regressions;
mod wakeups;
