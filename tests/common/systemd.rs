//! Checking systemd units with `systemd-analyze verify`, where the tool is installed.

use std::path::Path;
use std::process::Command;

/// Whether `systemd-analyze` can run here; if not, notes that the calling test is skipped.
pub fn have_systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        super::skip("systemd-analyze is not installed here");
    }
    found
}

/// Asserts that `systemd-analyze verify` accepts the unit at `path` and that none of its
/// warnings mention tailsrv (unknown keys and bad values are warnings, not failures).
#[track_caller]
pub fn assert_unit_verifies(path: &Path) {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // --man=no: the man page is generated, not installed, on a build machine.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .expect("running systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("tailsrv")).collect();
    assert!(ours.is_empty(), "{name}: {ours:#?}");
}
