# Tests that need an outside tool skip with a printed reason where it is missing; under
# HEADCOUNT_REQUIRE_TOOLS=1 (CI) a missing tool fails the run instead.
require_tools = System.get_env("HEADCOUNT_REQUIRE_TOOLS") == "1"

missing = fn tag, reason ->
  if require_tools do
    IO.puts(:stderr, "headcount: #{reason}, and HEADCOUNT_REQUIRE_TOOLS=1")
    System.halt(1)
  end

  IO.puts("skipping the #{inspect(tag)} tests: #{reason}")
  [tag]
end

# The cluster tests need this VM distributed (epmd, long names on 127.0.0.1).
distributed =
  cond do
    Node.alive?() ->
      []

    System.find_executable("epmd") == nil ->
      missing.(:distributed, "epmd not found")

    true ->
      {_, 0} = System.cmd("epmd", ["-daemon"])

      # `epmd -daemon` returns before a new epmd listens (on a fresh machine the first start
      # failed with econnrefused): try for up to five seconds.
      started =
        Enum.reduce_while(1..50, nil, fn _, _ ->
          case :net_kernel.start([:"headcount_test@127.0.0.1", :longnames]) do
            {:ok, _} = ok ->
              {:halt, ok}

            {:error, _} = e ->
              Process.sleep(100)
              {:cont, e}
          end
        end)

      case started do
        {:ok, _} -> []
        {:error, e} -> missing.(:distributed, "cannot start distribution: #{inspect(e)}")
      end
  end

# `headcount serve`, built by cargo (tests/exunit.rs passes its path).
serve =
  case System.get_env("HEADCOUNT_BIN") do
    nil -> missing.(:serve, "HEADCOUNT_BIN is not set (run through `cargo test`)")
    bin -> if File.exists?(bin), do: [], else: missing.(:serve, "#{bin} does not exist")
  end

ExUnit.start(exclude: distributed ++ serve, timeout: 120_000, capture_log: true)
