# The cost of one call, side by side in one run: Headcount.join/leave/count against what an
# Elixir app would otherwise do per join (:ets.update_counter on a shared table,
# :counters.add, Process.monitor). Run from bindings/elixir:
#
#     MIX_ENV=prod mix run bench/micro.exs
#
# Each figure is the mean of a million calls in a compiled loop (minus an empty loop's cost),
# best of five rounds; "first join" is a process's first presence (the one that sets up its
# monitor), measured over 100k fresh processes.

defmodule Micro do
  def empty(0), do: :ok

  def empty(n),
    do:
      (
        :erlang.phash2(n)
        empty(n - 1)
      )

  def join_leave(0), do: :ok

  def join_leave(n),
    do:
      (
        Headcount.join("bench:micro")
        Headcount.leave("bench:micro")
        join_leave(n - 1)
      )

  def count(0), do: :ok

  def count(n),
    do:
      (
        Headcount.count("bench:micro")
        count(n - 1)
      )

  def ets_pair(_t, 0), do: :ok

  def ets_pair(t, n) do
    :ets.update_counter(t, "bench:micro", 1, {"bench:micro", 0})
    :ets.update_counter(t, "bench:micro", -1)
    ets_pair(t, n - 1)
  end

  def counters_pair(_c, 0), do: :ok

  def counters_pair(c, n),
    do:
      (
        :counters.add(c, 1, 1)
        :counters.sub(c, 1, 1)
        counters_pair(c, n - 1)
      )

  def first_joins([]), do: :ok

  def first_joins([p | t]),
    do:
      (
        Headcount.join(p, "bench:first")
        first_joins(t)
      )

  def monitors([]), do: :ok

  def monitors([p | t]),
    do:
      (
        Process.monitor(p)
        monitors(t)
      )

  def ns(fun, n) do
    {us, _} = :timer.tc(fun)
    us * 1000 / n
  end

  def best(f), do: Enum.min(for _ <- 1..5, do: f.())
end

{:ok, _} = Headcount.start_link(tick: 100)
:ok = Headcount.join("bench:micro")
n = 1_000_000
ets = :ets.new(:bench, [:set, :public, write_concurrency: true])
ctr = :counters.new(1, [:write_concurrency])
empty = Micro.best(fn -> Micro.ns(fn -> Micro.empty(n) end, n) end)
pair = Micro.best(fn -> Micro.ns(fn -> Micro.join_leave(n) end, n) end) - empty
count = Micro.best(fn -> Micro.ns(fn -> Micro.count(n) end, n) end) - empty
ets_pair = Micro.best(fn -> Micro.ns(fn -> Micro.ets_pair(ets, n) end, n) end) - empty
ctr_pair = Micro.best(fn -> Micro.ns(fn -> Micro.counters_pair(ctr, n) end, n) end) - empty

fresh = fn -> for _ <- 1..100_000, do: spawn(fn -> receive do: (:exit -> :ok) end) end

rounds =
  for _ <- 1..3 do
    pids = fresh.()
    first = Micro.ns(fn -> Micro.first_joins(pids) end, 100_000)
    pids2 = fresh.()
    mon = Micro.ns(fn -> Micro.monitors(pids2) end, 100_000)
    for p <- pids ++ pids2, do: send(p, :exit)
    Process.sleep(500)
    {first, mon}
  end

{first, mon} = Enum.min(rounds)

row = fn name, v ->
  IO.puts(String.pad_trailing(name, 54) <> :erlang.float_to_binary(v / 1, decimals: 1) <> " ns")
end

IO.puts(
  "schedulers #{:erlang.system_info(:schedulers_online)}, #{:erlang.system_info(:otp_release)}"
)

row.("Headcount.join + Headcount.leave (one pair)", pair)
row.(":ets.update_counter +1 and -1 (one pair)", ets_pair)
row.(":counters.add + :counters.sub (one pair)", ctr_pair)
row.("Headcount.count", count)
row.("Headcount.join/2, a process's first presence", first)
row.("Process.monitor/1 (what a design that monitors pays)", mon)
Headcount.stop()
