//! The documents say what the binary does: the README's option summary is `tailsrv -h`.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tailsrv");

#[test]
fn readme_shows_the_real_short_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("`tailsrv -h`")
        .expect("README introduces `tailsrv -h`");
    let block = &readme[start..];
    let block = &block[block.find("```\n").expect("a code block follows") + 4..];
    let block = &block[..block.find("```").expect("the code block ends")];

    let output = Command::new(BIN).arg("-h").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // The README shows the options every build has; --journald needs a cargo feature.
    let help: String = help
        .lines()
        .skip_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.contains("--journald"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        block.trim_end(),
        help.trim_end(),
        "README.md's `tailsrv -h` block is stale"
    );
}
