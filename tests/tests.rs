//! tailsrv's integration tests: one test binary, so the helpers in `common` compile once.
//!
//! Each module drives the real `tailsrv` binary on port 0 against a temp file.

mod common;

mod docs;
mod fuzz;
mod lifecycle;
mod limits;
mod load;
mod ops;
mod protocol;
mod regressions;
