defmodule Mix.Tasks.Compile.HeadcountNif do
  @moduledoc """
  Builds the NIF (`native/headcount_nif`, a member of the repository's cargo workspace) with
  cargo and copies it to `priv/native/headcount_nif.so`, where `Headcount.Native` loads it.

  Release profile, except under `MIX_ENV=test` (cargo's dev profile, which the repository's
  `cargo test --workspace` has built already). `HEADCOUNT_CARGO_PROFILE=release|dev` overrides
  it; `CARGO_TARGET_DIR` is respected; `CARGO` names the cargo to run.
  """
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = Path.expand("../..", __DIR__)

    profile =
      System.get_env("HEADCOUNT_CARGO_PROFILE") ||
        if(Mix.env() == :test, do: "dev", else: "release")

    cargo =
      System.get_env("CARGO") || System.find_executable("cargo") ||
        Path.expand("~/.cargo/bin/cargo")

    unless File.exists?(cargo) do
      Mix.raise("headcount: cargo not found (install Rust, or set CARGO); it builds the NIF")
    end

    args = ["build", "--quiet", "-p", "headcount_nif", "--profile", profile]
    Mix.shell().info("headcount: cargo #{Enum.join(args, " ")}")

    case System.cmd(cargo, args, cd: root, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {out, code} -> Mix.raise("headcount: cargo failed (exit #{code}):\n#{out}")
    end

    target = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
    dir = if profile == "dev", do: "debug", else: profile

    lib =
      Enum.find(
        ["libheadcount_nif.so", "libheadcount_nif.dylib"],
        &File.exists?(Path.join([target, dir, &1]))
      )

    unless lib do
      Mix.raise("headcount: cargo built no libheadcount_nif in #{Path.join(target, dir)}")
    end

    dest = Path.join(Mix.Project.app_path(), "priv/native")
    File.mkdir_p!(dest)
    so = Path.join(dest, "headcount_nif.so")
    src = Path.join([target, dir, lib])

    # A copy, replaced only when it changed: a running VM keeps its loaded file.
    if not File.exists?(so) or File.read!(so) != File.read!(src) do
      tmp = so <> ".tmp"
      File.cp!(src, tmp)
      File.rename!(tmp, so)
    end

    {:ok, []}
  end
end

defmodule Headcount.MixProject do
  use Mix.Project

  def project do
    [
      app: :headcount,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:headcount_nif] ++ Mix.compilers(),
      deps: [],
      elixirc_paths: elixirc_paths(Mix.env()),
      description:
        "Exact cluster-wide counts of connected users per topic; presences end when their process does",
      test_paths: ["test"]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
