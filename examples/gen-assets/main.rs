//! Writes the man pages and shell completions into a directory, for packagers:
//!
//! ```text
//! cargo run --all-features --example gen-assets -- DIR
//! ```
//!
//! DIR gets `man/tailsrv.1` and `completions/tailsrv.bash`, `completions/_tailsrv` (zsh)
//! and `completions/tailsrv.fish`, and the same four for `tailsrv-fetch`. Build with the same features as the binary you ship,
//! so the pages list the same options (`--journald` needs `tracing-journald`).

mod assets;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen-assets DIR");
        return ExitCode::from(2);
    };
    match assets::write_all(dir.as_ref()) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "gen-assets: error: writing into {}: {e}",
                dir.to_string_lossy()
            );
            ExitCode::FAILURE
        }
    }
}
