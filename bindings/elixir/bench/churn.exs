# Churn benchmark: headcount vs José's design vs ETS + monitor (and a no-op calibration row).
# See README.md in this directory. Usage (from bindings/elixir):
#
#   export ELIXIR_ERL_OPTIONS="+P 2000000 +sbwt none +sbwtdcpu none +sbwtdio none"
#   MIX_ENV=prod mix run bench/churn.exs [options]
#   elixir bench/churn.exs [options]        # without the library (its column is skipped)
#
# Options: --topics 1000,10000  --nodes 1,2  --designs headcount,jose,ets_monitor,noop
#          --presences 100000 --step-ms 1500 --start-rate 20000 --factor 1.6 --max-rate 4000000
#          --settle-rate 20000 --p99-ms 10 --cluster multicast|erlang --jose-tick 1000
#          --hc-tick 100 --pacers <schedulers> --seed 1 --out FILE (markdown)

{opts, _, invalid} =
  OptionParser.parse(System.argv(),
    strict: [
      topics: :string,
      nodes: :string,
      designs: :string,
      presences: :integer,
      step_ms: :integer,
      start_rate: :integer,
      factor: :float,
      max_rate: :integer,
      settle_rate: :integer,
      p99_ms: :integer,
      cluster: :string,
      jose_tick: :integer,
      hc_tick: :integer,
      pacers: :integer,
      seed: :integer,
      out: :string
    ]
  )

if invalid != [], do: raise("unknown options: #{inspect(invalid)}")
ints = fn s -> s |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1) end

o = %{
  topics: ints.(Keyword.get(opts, :topics, "1000,10000")),
  nodes: ints.(Keyword.get(opts, :nodes, "1,2")),
  designs:
    Keyword.get(opts, :designs, "headcount,jose,ets_monitor,noop")
    |> String.split(",", trim: true)
    |> Enum.map(&String.to_atom/1),
  presences: Keyword.get(opts, :presences, 100_000),
  step_ms: Keyword.get(opts, :step_ms, 1500),
  start_rate: Keyword.get(opts, :start_rate, 20_000),
  factor: Keyword.get(opts, :factor, 1.6),
  max_rate: Keyword.get(opts, :max_rate, 4_000_000),
  settle_rate: Keyword.get(opts, :settle_rate, 20_000),
  p99_ms: Keyword.get(opts, :p99_ms, 10),
  cluster: String.to_atom(Keyword.get(opts, :cluster, "multicast")),
  jose_tick: Keyword.get(opts, :jose_tick, 1000),
  hc_tick: Keyword.get(opts, :hc_tick, 100),
  pacers: Keyword.get(opts, :pacers, System.schedulers_online()),
  seed: Keyword.get(opts, :seed, 1),
  out: Keyword.get(opts, :out)
}

# Compile the bench modules into a directory on the code path, so :peer nodes load them too.
ebin = Path.join(System.tmp_dir!(), "headcount_bench_ebin_#{System.pid()}")
File.rm_rf!(ebin)
File.mkdir_p!(ebin)
files = Path.wildcard(Path.join([__DIR__, "lib", "**", "*.ex"]))
{:ok, _mods, _warnings} = Kernel.ParallelCompiler.compile_to_path(files, ebin)
:code.add_patha(String.to_charlist(ebin))

limit = :erlang.system_info(:process_limit)

if limit < 1_000_000,
  do:
    IO.puts(:stderr, "warning: process limit #{limit}; run with ELIXIR_ERL_OPTIONS=\"+P 2000000\"")

hc = Bench.Design.Headcount.available?()

IO.puts(
  :stderr,
  "headcount library: #{if hc, do: "loaded", else: "NOT loaded (its row is skipped)"}"
)

IO.puts(:stderr, "options: #{inspect(o)}")

t0 = System.monotonic_time(:millisecond)
{:ok, date} = {:ok, DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_string()}
{cpu, 0} = System.cmd("sh", ["-c", "lscpu | grep 'Model name' | sed 's/  */ /g'"])

md = fn results ->
  secs = div(System.monotonic_time(:millisecond) - t0, 1000)

  """
  Run #{date}, #{String.trim(cpu)}, #{System.schedulers_online()} schedulers, \
  OTP #{System.otp_release()}, Elixir #{System.version()}, #{secs} s. Options: `#{inspect(o)}`

  """ <> Bench.Report.markdown(results, o)
end

# --out is rewritten after every scenario, so a run cut short keeps what it finished
results = Bench.Runner.run(o, fn so_far -> if o.out, do: File.write!(o.out, md.(so_far)) end)
final = md.(results)
IO.puts(final)
if o.out, do: File.write!(o.out, final)
File.rm_rf!(ebin)
