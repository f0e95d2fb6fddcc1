defmodule Bench.Node do
  @moduledoc """
  The bench's agent on every node (the driver's node and the peers): owns the pacers, the
  design instance (`setup/1` runs in this long-lived process), the node's ground truth and the
  per-step latency histogram. The driver calls the public functions through `:erpc`.
  Shared read-only configuration is in `:persistent_term` under `Bench.Node` (written only
  between scenarios, when no holder is alive).
  """
  use GenServer

  @conf Bench.Node
  @state :bench_node_state

  # --- lifecycle ---

  def start do
    case Process.whereis(__MODULE__) do
      nil -> :ok
      pid -> GenServer.stop(pid)
    end

    {:ok, _} = GenServer.start(__MODULE__, [], name: __MODULE__)
    :ok
  end

  @doc "New topic set (ranks 1..n, Zipf s=1), fresh truth, `pacers` new pacers."
  def scenario(n_topics, seed, pacers), do: call({:scenario, n_topics, seed, pacers})
  def setup(mod, opts), do: call({:setup, mod, opts})
  def teardown, do: call(:teardown)

  # --- load ---

  @doc "Spawns n holders split over the pacers; returns when every one is past its join (or 120 s)."
  def fill(n, join?, hist_key \\ :fill) do
    %{ctr: ctr} = conf()
    hist = new_hist(hist_key)
    {mod, pacers} = call(:mod_pacers)
    target = :counters.get(ctr, 1) + n
    shares = split(n, length(pacers))

    tasks =
      Enum.zip(pacers, shares)
      |> Enum.map(fn {p, k} ->
        Task.async(fn -> Bench.Pacer.call(p, {:fill, k, join?, mod, hist}) end)
      end)

    Enum.each(tasks, &Task.await(&1, :infinity))
    wait_until(fn -> :counters.get(ctr, 2) >= target end, 120_000)
  end

  @doc "Stops every holder (normal exit) and waits until all are dead."
  def stop_all do
    {_mod, pacers} = call(:mod_pacers)

    pacers
    |> Enum.map(&Task.async(fn -> Bench.Pacer.call(&1, :stop_all) end))
    |> Enum.each(&Task.await(&1, :infinity))

    :ok
  end

  @doc "Starts churn at `rate` (joins + exits per second on this node)."
  def churn(rate) do
    hist = new_hist(:step)
    {_mod, pacers} = call(:mod_pacers)
    pairs = split(div(rate, 2), length(pacers))
    Enum.zip(pacers, pairs) |> Enum.each(fn {p, r} -> Bench.Pacer.call(p, {:churn, r, hist}) end)
    :ok
  end

  def stop_churn do
    {_mod, pacers} = call(:mod_pacers)
    rs = Enum.map(pacers, &Bench.Pacer.call(&1, :stop_churn))

    %{
      done: Enum.sum(Enum.map(rs, & &1.done)),
      due: Enum.sum(Enum.map(rs, & &1.due)),
      elapsed_ns: Enum.max(Enum.map(rs, & &1.elapsed_ns))
    }
  end

  def hist(key), do: Bench.Hist.to_list(:ets.lookup_element(@state, {:hist, key}, 2))

  # --- observation ---

  @doc "The design's queued messages and the holders spawned but not yet past their join."
  def status do
    %{ctr: ctr} = conf()
    mod = current_mod()
    backlog = if mod, do: mod.backlog(), else: 0
    pending = :counters.get(ctr, 1) - :counters.get(ctr, 2)
    %{backlog: backlog, pending: pending, run_queue: :erlang.statistics(:total_run_queue_lengths)}
  end

  @doc "The design's own diagnostics on this node (optional callback `diagnostics/0`)."
  def diagnostics do
    mod = current_mod()

    if mod && function_exported?(mod, :diagnostics, 0),
      do: {node(), mod.diagnostics()},
      else: {node(), nil}
  end

  @doc "The design's counts on this node for the sampled ranks, and its total."
  def snapshot(ranks) do
    %{topics: topics} = conf()
    mod = current_mod()
    {Enum.map(ranks, &mod.count(elem(topics, &1 - 1))), mod.total()}
  end

  @doc "This node's ground truth for the sampled ranks, and its total."
  def truth(ranks) do
    %{truth: truth, total_slot: ts} = conf()
    {Enum.map(ranks, &:counters.get(truth, &1)), :counters.get(truth, ts)}
  end

  @doc """
  `:erlang.memory(:total)` after a garbage collection of every process, minus the memory of the
  harness's own processes (the pacers hold the 100k-entry FIFO of holders, whose heap size after
  a GC varies by megabytes) — a map by category (total, ets, processes, binary, system_other).
  """
  def memory do
    # Repeated until two readings 200 ms apart agree within 64 KB (at most 8): frees made on
    # another scheduler reach their allocator later (delayed dealloc), so one reading right
    # after a GC of everything can be off by megabytes.
    {_mod, pacers} = call(:mod_pacers)
    harness = [self(), Process.whereis(__MODULE__) | pacers]
    settle_memory(harness, read_memory(harness), 8)
  end

  defp settle_memory(_harness, m, 0), do: m

  defp settle_memory(harness, m, tries) do
    Process.sleep(200)
    m2 = read_memory(harness)
    if abs(m2.total - m.total) < 65_536, do: m2, else: settle_memory(harness, m2, tries - 1)
  end

  defp read_memory(harness) do
    :erlang.processes() |> Enum.each(&:erlang.garbage_collect/1)

    own =
      harness
      |> Enum.map(&Process.info(&1, :memory))
      |> Enum.map(fn {:memory, m} -> m end)
      |> Enum.sum()

    m = :erlang.memory()

    %{
      total: m[:total] - own,
      ets: m[:ets],
      processes: m[:processes_used] - own,
      binary: m[:binary],
      system_other: m[:system] - m[:ets] - m[:binary],
      node: node(),
      rss: rss()
    }
  end

  @doc "Resident set size of this OS process, bytes (includes what a NIF takes from malloc)."
  def rss do
    case File.read("/proc/self/status") do
      {:ok, s} ->
        [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, s)
        String.to_integer(kb) * 1024

      _ ->
        0
    end
  end

  @doc "CPU time of this OS process (every thread: schedulers, NIF threads), in clock ticks."
  def cpu_ticks do
    case File.read("/proc/self/stat") do
      {:ok, s} ->
        [_, rest] = String.split(s, ") ", parts: 2)
        f = String.split(rest, " ")
        String.to_integer(Enum.at(f, 11)) + String.to_integer(Enum.at(f, 12))

      _ ->
        0
    end
  end

  @doc "CPU ticks of this OS process's threads, summed by thread name (`/proc/self/task/*/stat`)."
  def threads_cpu do
    case File.ls("/proc/self/task") do
      {:ok, tids} ->
        Enum.reduce(tids, %{}, fn tid, acc ->
          case File.read("/proc/self/task/#{tid}/stat") do
            {:ok, s} ->
              [pre, rest] = String.split(s, ") ", parts: 2)
              [_, name] = String.split(pre, " (", parts: 2)
              f = String.split(rest, " ")
              t = String.to_integer(Enum.at(f, 11)) + String.to_integer(Enum.at(f, 12))
              Map.update(acc, name, t, &(&1 + t))

            _ ->
              acc
          end
        end)

      _ ->
        %{}
    end
  end

  # --- internals ---

  defp current_mod do
    case :ets.lookup(@state, :mod) do
      [{_, mod}] -> mod
      [] -> nil
    end
  end

  defp call(msg), do: GenServer.call(__MODULE__, msg, :infinity)
  defp conf, do: :persistent_term.get(@conf)

  defp new_hist(key) do
    # in ETS, not :persistent_term: replacing a persistent term makes every process (100k
    # holders) garbage-collect
    h = Bench.Hist.new()
    :ets.insert(@state, {{:hist, key}, h})
    h
  end

  defp split(n, k), do: for(i <- 0..(k - 1), do: div(n, k) + if(i < rem(n, k), do: 1, else: 0))

  defp wait_until(fun, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn ->
      cond do
        fun.() -> :ok
        System.monotonic_time(:millisecond) > deadline -> :timeout
        true -> Process.sleep(5) && nil
      end
    end)
    |> Enum.find(& &1)
  end

  @impl true
  def init(_) do
    Process.flag(:trap_exit, true)
    :ets.new(@state, [:set, :public, :named_table])
    {:ok, %{pacers: [], mod: nil}}
  end

  @impl true
  def handle_call({:scenario, n_topics, seed, npacers}, _from, st) do
    Enum.each(st.pacers, &(Process.unlink(&1) && Process.exit(&1, :kill)))

    :persistent_term.put(@conf, %{
      topics: Bench.Zipf.topics(n_topics),
      cdf: Bench.Zipf.cdf(n_topics),
      truth: :counters.new(n_topics + 1, [:write_concurrency]),
      total_slot: n_topics + 1,
      ctr: :counters.new(2, [:write_concurrency])
    })

    pacers = for i <- 1..npacers, do: Bench.Pacer.start_link(i, seed)
    {:reply, :ok, %{st | pacers: pacers}}
  end

  def handle_call({:setup, mod, opts}, _from, st) do
    :ok = mod.setup(opts)
    :ets.insert(@state, {:mod, mod})
    {:reply, :ok, %{st | mod: mod}}
  end

  def handle_call(:teardown, _from, st) do
    if st.mod, do: st.mod.teardown()
    :ets.delete(@state, :mod)
    {:reply, :ok, %{st | mod: nil}}
  end

  def handle_call(:mod_pacers, _from, st), do: {:reply, {st.mod, st.pacers}, st}

  @impl true
  def handle_info({:EXIT, _pid, :normal}, st), do: {:noreply, st}

  def handle_info({:EXIT, pid, reason}, st) do
    IO.puts(:stderr, "[#{node()}] Bench.Node: linked #{inspect(pid)} exited: #{inspect(reason)}")
    {:noreply, st}
  end
end
