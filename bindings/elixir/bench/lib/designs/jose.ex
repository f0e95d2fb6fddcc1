defmodule Bench.Design.Jose do
  @moduledoc """
  "José's design", written from the forum thread (step 1 + step 2 + the per-topic follow-up):

  * N `LocalCounter` GenServers (N = schedulers online), registered in a `Registry` under their
    index. `join/1` picks one with `:erlang.phash2(self(), N) + 1` and `GenServer.cast`s
    `{:count, self(), topic}` to it via `{:via, Registry, ...}`.
  * The LocalCounter monitors the pid, stores `{pid, topic}` in a public ETS table (so the
    `:DOWN` knows which topic to decrement), bumps the topic in a public ETS table of
    `{topic, count}` with `:ets.update_counter/4`, and its own slot of a `:counters` array
    (the node's total is the sum of the slots). On `:DOWN` it takes the pid's row and
    decrements both.
  * A GlobalCounter broadcasts, every X ms (default 1000), the node's whole topic table and total
    to the GlobalCounter of every other node; each receiver stores them (with the time it
    received them) in ETS. A count is the live local count plus the other nodes' last broadcast.
    Nodes are dropped on `:nodedown` (`:net_kernel.monitor_nodes/1`) or when silent for 3·X.
  """
  @behaviour Bench.Design
  use Supervisor

  alias __MODULE__.{GlobalCounter, LocalCounter}

  @counts :bench_jose_counts
  @pids :bench_jose_pids
  @remote :bench_jose_remote
  @remote_totals :bench_jose_remote_totals
  @registry Bench.Design.Jose.Registry
  @conf {__MODULE__, :conf}

  def tables, do: %{counts: @counts, pids: @pids, remote: @remote, remote_totals: @remote_totals}

  @impl Bench.Design
  def name, do: "José's design"
  @impl Bench.Design
  def available?, do: true
  @impl Bench.Design
  def tick_ms(opts), do: Keyword.get(opts, :jose_tick, 1000)

  @impl Bench.Design
  def setup(opts) do
    {:ok, _} = Supervisor.start_link(__MODULE__, opts, name: __MODULE__)
    :ok
  end

  @impl Bench.Design
  def teardown do
    Supervisor.stop(__MODULE__)
    :persistent_term.erase(@conf)
    :ok
  end

  @impl Bench.Design
  def join(topic) do
    {n, _counter} = :persistent_term.get(@conf)
    index = :erlang.phash2(self(), n) + 1
    GenServer.cast({:via, Registry, {@registry, index}}, {:count, self(), topic})
  end

  def count_local(topic) do
    case :ets.lookup(@counts, topic) do
      [{_, c}] -> c
      [] -> 0
    end
  end

  def total_local do
    {n, counter} = :persistent_term.get(@conf)
    Enum.reduce(1..n, 0, fn i, acc -> acc + :counters.get(counter, i) end)
  end

  @impl Bench.Design
  def count(topic) do
    remote = :ets.select(@remote, [{{{topic, :_}, :"$1"}, [], [:"$1"]}])
    count_local(topic) + Enum.sum(remote)
  end

  @impl Bench.Design
  def total do
    remote = :ets.select(@remote_totals, [{{:_, :"$1", :_}, [], [:"$1"]}])
    total_local() + Enum.sum(remote)
  end

  @impl Bench.Design
  def backlog do
    {n, _} = :persistent_term.get(@conf)

    locals =
      Enum.reduce(1..n, 0, fn i, acc ->
        case Registry.lookup(@registry, i) do
          [{pid, _}] -> acc + Bench.Design.queue_len(pid)
          [] -> acc
        end
      end)

    locals + Bench.Design.queue_len(GlobalCounter)
  end

  # --- the CounterSupervisor ---

  @impl Supervisor
  def init(opts) do
    n = Keyword.get(opts, :jose_n, System.schedulers_online())
    tick = tick_ms(opts)
    counter = :counters.new(n, [:write_concurrency])
    :persistent_term.put(@conf, {n, counter})
    pub = [:public, :named_table, read_concurrency: true, write_concurrency: true]
    :ets.new(@counts, [:set | pub])
    :ets.new(@pids, [:set | pub])
    # {{topic, node}, count}: an ordered_set so a count is a range scan on the topic.
    :ets.new(@remote, [:ordered_set | pub])
    # {node, total, received_at}
    :ets.new(@remote_totals, [:set | pub])

    children =
      [
        {Registry, name: @registry, keys: :unique},
        {GlobalCounter, counter: counter, n: n, tick: tick}
      ] ++
        Enum.map(1..n, fn index ->
          Supervisor.child_spec({LocalCounter, counter: counter, index: index}, id: index)
        end)

    Supervisor.init(children, strategy: :one_for_one)
  end

  defmodule LocalCounter do
    @moduledoc false
    use GenServer
    @counts :bench_jose_counts
    @pids :bench_jose_pids

    def start_link(opts) do
      index = Keyword.fetch!(opts, :index)

      GenServer.start_link(__MODULE__, opts,
        name: {:via, Registry, {Bench.Design.Jose.Registry, index}}
      )
    end

    @impl true
    def init(opts), do: {:ok, {Keyword.fetch!(opts, :counter), Keyword.fetch!(opts, :index)}}

    @impl true
    def handle_cast({:count, pid, topic}, {counter, index} = state) do
      Process.monitor(pid)
      :ets.insert(@pids, {pid, topic})
      :ets.update_counter(@counts, topic, 1, {topic, 0})
      :counters.add(counter, index, 1)
      {:noreply, state}
    end

    @impl true
    def handle_info({:DOWN, _ref, :process, pid, _reason}, {counter, index} = state) do
      case :ets.take(@pids, pid) do
        [{^pid, topic}] ->
          :ets.update_counter(@counts, topic, -1)
          :counters.sub(counter, index, 1)

        [] ->
          :ok
      end

      {:noreply, state}
    end
  end

  defmodule GlobalCounter do
    @moduledoc false
    use GenServer
    @counts :bench_jose_counts
    @remote :bench_jose_remote
    @remote_totals :bench_jose_remote_totals

    def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

    @impl true
    def init(opts) do
      :ok = :net_kernel.monitor_nodes(true)
      tick = Keyword.fetch!(opts, :tick)
      Process.send_after(self(), :tick, tick)
      {:ok, %{counter: Keyword.fetch!(opts, :counter), n: Keyword.fetch!(opts, :n), tick: tick}}
    end

    @impl true
    def handle_info(:tick, state) do
      Process.send_after(self(), :tick, state.tick)
      total = Enum.reduce(1..state.n, 0, fn i, acc -> acc + :counters.get(state.counter, i) end)
      counts = :ets.tab2list(@counts)
      msg = {:global_counter, node(), total, counts}
      Enum.each(Node.list(), fn n -> send({__MODULE__, n}, msg) end)
      prune(System.monotonic_time(:millisecond) - 3 * state.tick)
      {:noreply, state}
    end

    def handle_info({:global_counter, from, total, counts}, state) do
      now = System.monotonic_time(:millisecond)
      :ets.insert(@remote, Enum.map(counts, fn {topic, c} -> {{topic, from}, c} end))
      :ets.insert(@remote_totals, {from, total, now})
      {:noreply, state}
    end

    def handle_info({:nodedown, n}, state) do
      drop(n)
      {:noreply, state}
    end

    def handle_info({:nodeup, _}, state), do: {:noreply, state}

    defp prune(older_than) do
      for {n, _, at} <- :ets.tab2list(@remote_totals), at < older_than, do: drop(n)
    end

    defp drop(n) do
      :ets.delete(@remote_totals, n)
      :ets.match_delete(@remote, {{:_, n}, :_})
    end
  end
end
