//! What `gen-assets` writes: a man page and bash, zsh and fish completions for every
//! binary, each generated from the binary's clap definition so it cannot drift from
//! `--help`. tests/packaging.rs includes this file to check the output.

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::io;
use std::path::{Path, PathBuf};

/// A binary's installed name and its clap definition.
pub type Binary = (&'static str, fn() -> Command);

/// Every binary the package installs. A new binary is one more line here.
pub const BINARIES: &[Binary] = &[
    ("tailsrv", tailsrv::cli::Options::command),
    (
        "tailsrv-fetch",
        tailsrv::fetch::options::FetchOptions::command,
    ),
];

/// Writes `man/NAME.1` and `completions/{NAME.bash,_NAME,NAME.fish}` for every binary
/// into `dir`, and returns the paths written.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, command) in BINARIES {
        let cmd = command().name(*name).bin_name(*name);
        let man = dir.join("man");
        std::fs::create_dir_all(&man)?;
        let page = man.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(&page, out)?;
        written.push(page);

        let completions = dir.join("completions");
        std::fs::create_dir_all(&completions)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = clap_complete::generate_to(shell, &mut cmd.clone(), *name, &completions)?;
            written.push(path);
        }
    }
    Ok(written)
}
