defmodule Bench.Design.EtsMonitor do
  @moduledoc """
  Baseline: one public ETS table of `{topic, count}` and one monitor process.

  The joining process bumps the topic itself (`:ets.update_counter/4`, plus a `:counters` total)
  and sends `{:track, self(), topic}` to the monitor, which monitors it and decrements on
  `:DOWN` (it keeps `ref => topic` in its state).

  It is node-local. On several nodes, `count/1` and `total/0` add the other nodes' local counts
  with an `:erpc` call per node at read time (exact as soon as every monitor has drained, but a
  read costs a round trip to every node).
  """
  @behaviour Bench.Design
  use GenServer

  @tab :bench_etsmon_counts
  @total_key {__MODULE__, :total}

  @impl Bench.Design
  def name, do: "ETS + monitor"
  @impl Bench.Design
  def available?, do: true
  @impl Bench.Design
  def tick_ms(_), do: nil

  @impl Bench.Design
  def setup(_opts) do
    {:ok, _} = GenServer.start_link(__MODULE__, [], name: __MODULE__)
    :ok
  end

  @impl Bench.Design
  def teardown do
    GenServer.stop(__MODULE__)
    :persistent_term.erase(@total_key)
    :ok
  end

  @impl Bench.Design
  def join(topic) do
    :ets.update_counter(@tab, topic, 1, {topic, 0})
    :counters.add(:persistent_term.get(@total_key), 1, 1)
    send(__MODULE__, {:track, self(), topic})
    :ok
  end

  def count_local(topic) do
    case :ets.lookup(@tab, topic) do
      [{_, c}] -> c
      [] -> 0
    end
  end

  def total_local, do: :counters.get(:persistent_term.get(@total_key), 1)

  @impl Bench.Design
  def count(topic), do: count_local(topic) + remote_sum(:count_local, [topic])

  @impl Bench.Design
  def total, do: total_local() + remote_sum(:total_local, [])

  defp remote_sum(fun, args) do
    Node.list()
    |> Enum.map(fn n ->
      try do
        :erpc.call(n, __MODULE__, fun, args, 5_000)
      catch
        _, _ -> 0
      end
    end)
    |> Enum.sum()
  end

  @impl Bench.Design
  def backlog, do: Bench.Design.queue_len(__MODULE__)

  # --- the monitor process ---

  @impl GenServer
  def init(_) do
    :ets.new(@tab, [:set, :public, :named_table, read_concurrency: true, write_concurrency: true])
    :persistent_term.put(@total_key, :counters.new(1, [:write_concurrency]))
    {:ok, %{}}
  end

  @impl GenServer
  def handle_info({:track, pid, topic}, refs) do
    {:noreply, Map.put(refs, Process.monitor(pid), topic)}
  end

  def handle_info({:DOWN, ref, :process, _pid, _reason}, refs) do
    case Map.pop(refs, ref) do
      {nil, refs} ->
        {:noreply, refs}

      {topic, refs} ->
        :ets.update_counter(@tab, topic, -1)
        :counters.sub(:persistent_term.get(@total_key), 1, 1)
        {:noreply, refs}
    end
  end
end
