defmodule Bench.Holder do
  @moduledoc """
  A "user": one process per presence. It joins one topic, records how long the join call took
  (`:erlang.monotonic_time/0` before and after, as seen by itself), then waits until told to
  stop and exits normally. `join? = false` is the memory baseline: the same process, the same
  bookkeeping, no join.
  """

  # ctr: :counters of the node — 1 = holders spawned, 2 = holders past their join
  def run(mod, topic, hist, ctr, true) do
    t0 = :erlang.monotonic_time()
    mod.join(topic)
    t1 = :erlang.monotonic_time()
    Bench.Hist.record(hist, t1 - t0)
    :counters.add(ctr, 2, 1)

    receive do
      :stop -> :ok
    end
  end

  def run(_mod, _topic, _hist, ctr, false) do
    :counters.add(ctr, 2, 1)

    receive do
      :stop -> :ok
    end
  end
end
