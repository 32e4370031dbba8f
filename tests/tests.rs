//! tailsrv's integration tests: one test binary, so the helpers in `common` compile once.
//!
//! Tests drive the real `tailsrv` binary on port 0 against a temp file; where a test needs
//! the server's state (client counts, liveness checks, whether it is stopping), it runs the
//! server inside the test process instead (`common::InProcess`, through `tailsrv::Server`)
//! and asks its `Handle`, rather than parse log lines. `fetch` drives `tailsrv-fetch`
//! against such servers too.

mod common;

mod addresses;
mod backpressure;
mod binding;
mod docs;
mod fetch;
mod fuzz;
mod http;
mod inprocess;
mod lifecycle;
mod limits;
mod linger;
mod load;
mod metrics;
mod ops;
mod packaging;
mod protocol;
mod regressions;
mod rotation;
mod wakeups;
mod web;
