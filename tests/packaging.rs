//! What a packager installs: the systemd units in dist/systemd (checked by
//! `systemd-analyze verify` where it exists), the example environment file, and the man
//! page and completions that `cargo run --example gen-assets -- DIR` writes.

use crate::common::*;
use clap::CommandFactory;
use std::path::Path;

#[path = "../examples/gen-assets/assets.rs"]
mod assets;

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/systemd");
/// Where the shipped units expect the binary.
const INSTALLED: &str = "/usr/local/bin/tailsrv";

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(DIST).join(name))
        .unwrap_or_else(|e| panic!("reading dist/systemd/{name}: {e}"))
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !have_systemd_analyze() {
        return;
    }
    // verify insists that ExecStart's program exists: point the units at this build.
    let dir = TempDir::new();
    for name in ["tailsrv.service", "tailsrv@.service"] {
        let text = unit(name);
        assert!(text.contains(INSTALLED), "{name} runs {INSTALLED}");
        std::fs::write(dir.join(name), text.replace(INSTALLED, BIN)).unwrap();
    }
    // A template is verified through an instance of it.
    for name in ["tailsrv.service", "tailsrv@example.service"] {
        assert_unit_verifies(&dir.join(name));
    }
}

/// `KEY=VALUE` lines of an environment file, comments and blank lines skipped.
#[cfg(feature = "tracing-journald")]
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// ExecStart= of a unit, with its variables expanded as systemd does: `${X}` becomes one
/// word, `$X` splits into words at whitespace.
#[cfg(feature = "tracing-journald")]
fn exec_start(unit: &str, env: &[(String, String)]) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("ExecStart uses {name}, which the environment file lacks"))
    };
    let mut argv = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(lookup(name));
        } else if let Some(name) = word.strip_prefix('$') {
            argv.extend(lookup(name).split_whitespace().map(str::to_string));
        } else {
            argv.push(word.to_string());
        }
    }
    argv
}

#[test]
#[cfg(feature = "tracing-journald")]
fn the_template_with_the_example_environment_is_a_valid_command_line() {
    use clap::Parser;
    let env = env_file(&unit("example.env"));
    let argv = exec_start(&unit("tailsrv@.service"), &env);
    assert_eq!(argv[0], INSTALLED);
    let opts =
        tailsrv::cli::Options::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert_eq!(opts.port, 4321);
    assert_eq!(opts.file, Path::new("/var/log/app/events.log"));
    assert!(opts.metrics.is_some() && opts.bind.is_some(), "{opts:?}");
    let single = exec_start(&unit("tailsrv.service"), &[]);
    tailsrv::cli::Options::try_parse_from(&single)
        .unwrap_or_else(|e| panic!("tailsrv.service: {single:?}: {e}"));
}

#[test]
fn man_page_and_completions_cover_every_option_of_every_binary() {
    let tmp = TempDir::new();
    let root = tmp.join("assets");
    let written = assets::write_all(&root).expect("writing the assets");
    for binary in ["tailsrv", "tailsrv-fetch"] {
        assert!(
            assets::BINARIES.iter().any(|(name, _)| *name == binary),
            "{binary}"
        );
    }
    for (name, command) in assets::BINARIES {
        let files = [
            format!("man/{name}.1"),
            format!("completions/{name}.bash"),
            format!("completions/_{name}"),
            format!("completions/{name}.fish"),
        ];
        for f in &files {
            assert!(
                written.contains(&root.join(f)),
                "{f} not written: {written:?}"
            );
        }
        let read = |f: &String| std::fs::read_to_string(root.join(f)).unwrap();
        let [man, bash, zsh, fish] = files.each_ref().map(read);
        assert!(
            man.starts_with(".ie") && man.contains(&format!(".TH {name} 1")),
            "{man}"
        );
        let longs: Vec<String> = command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        assert!(longs.len() >= 2, "{name}: {longs:?}");
        for long in &longs {
            // roff escapes the dashes.
            let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(man.contains(&roff), "{name}'s man page lacks --{long}");
            assert!(
                bash.contains(&format!("--{long}")),
                "bash, {name}: --{long}"
            );
            assert!(zsh.contains(&format!("--{long}")), "zsh, {name}: --{long}");
            assert!(
                fish.contains(&format!("-l {long}")),
                "fish, {name}: --{long}"
            );
        }
    }
    let cmd = tailsrv::cli::Options::command();
    assert!(cmd.get_arguments().any(|a| a.get_long() == Some("metrics")));
}
