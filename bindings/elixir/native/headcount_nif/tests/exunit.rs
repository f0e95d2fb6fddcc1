//! The Elixir binding's checks, run by `cargo test`: `mix format --check-formatted`,
//! `mix compile --warnings-as-errors` (which builds this crate's NIF with cargo: a no-op when this
//! run built it already), and its tests (`bindings/elixir/test`, ExUnit): single-node semantics,
//! three BEAM nodes over Erlang distribution, and a BEAM node with a `headcount serve` node in one
//! UDP cluster.
//!
//! Skips with a printed reason where Elixir is missing, unless `HEADCOUNT_REQUIRE_TOOLS=1` (CI),
//! where that fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[test]
fn exunit() {
    let require = std::env::var("HEADCOUNT_REQUIRE_TOOLS").as_deref() == Ok("1");
    let Some(mix) = find("mix") else {
        assert!(
            !require,
            "mix not found and HEADCOUNT_REQUIRE_TOOLS=1 (apt-get install elixir erlang-dev)"
        );
        eprintln!("SKIPPED exunit: mix not found (apt-get install elixir erlang-dev)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The `headcount serve` the UDP test clusters with, from this run's profile directory
    // (target/debug: this test binary is target/debug/deps/exunit-…).
    let out = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let built = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "headcount-server",
            "--bin",
            "headcount",
        ])
        .current_dir(&root)
        .status()
        .expect("run cargo");
    assert!(built.success(), "cargo build of headcount serve failed");
    let bin = out.join("headcount");
    assert!(bin.is_file(), "{} was not built", bin.display());

    let run = |args: &[&str]| {
        Command::new(&mix)
            .args(args)
            .current_dir(root.join("bindings/elixir"))
            .env("MIX_ENV", "test")
            .env("HEADCOUNT_BIN", &bin)
            .env("HEADCOUNT_CARGO_PROFILE", "dev")
            .env("CARGO", &cargo)
            .status()
            .expect("run mix")
    };
    // Formatted, compiled without a warning, then tested (one after another: they share
    // `_build`).
    for args in [
        &["format", "--check-formatted"][..],
        &["compile", "--warnings-as-errors"],
    ] {
        let status = run(args);
        assert!(status.success(), "mix {} failed: {status}", args.join(" "));
    }
    let status = run(&["test"]);
    assert!(status.success(), "mix test failed: {status}");
}
