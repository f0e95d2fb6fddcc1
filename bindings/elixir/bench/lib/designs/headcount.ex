defmodule Bench.Design.Headcount do
  @moduledoc """
  The library under test (`Headcount`, the Rust NIF). On one node it runs without a cluster
  option; on several, every node starts it in the same cluster (`--cluster multicast`, the
  default: UDP multicast 239.255.70.78:7390 on loopback, `insecure: true`; or `--cluster erlang`).
  """
  @behaviour Bench.Design
  @compile {:no_warn_undefined, Headcount}

  @impl true
  def name, do: "headcount"

  @impl true
  def available?, do: Code.ensure_loaded?(Headcount) and function_exported?(Headcount, :join, 1)

  @impl true
  def tick_ms(opts), do: Keyword.get(opts, :hc_tick, 100)

  @impl true
  def setup(opts) do
    base = [tick: tick_ms(opts)]

    cluster =
      cond do
        Keyword.get(opts, :nodes, 1) == 1 ->
          []

        Keyword.get(opts, :cluster, :multicast) == :erlang ->
          [cluster: :erlang]

        true ->
          [cluster: [multicast: {{239, 255, 70, 78}, 7390}], cluster_name: "bench", insecure: true]
      end

    {:ok, _} = Headcount.start_link(base ++ cluster)
    :ok
  end

  @impl true
  def teardown do
    Headcount.stop()
    :ok
  end

  @impl true
  def join(topic), do: Headcount.join(topic)

  @impl true
  def count(topic), do: Headcount.count(topic)

  @impl true
  def total, do: Headcount.total()

  @doc "`Headcount.info/0` (presences and processes held, shared-path ops) and the peers' view."
  def diagnostics do
    info = Headcount.info()

    peers =
      for n <- Headcount.nodes(),
          do: Map.take(n, [:alive, :converged, :total, :topics, :found, :erlang_node])

    %{
      info: Map.take(info, [:presences, :processes, :shared_ops, :topics, :shards, :free_shards]),
      peers: peers
    }
  end

  @impl true
  def backlog do
    # Message queues of whatever processes the library registered under its own modules, plus
    # any queue the NIF reports in info/0 (e.g. first joins waiting for their monitor, if it
    # ever says so under one of these keys). A queue the NIF keeps but does not report is
    # invisible here; the "exact after the step" criterion still catches it.
    mailboxes =
      Process.registered()
      |> Enum.filter(&String.starts_with?(Atom.to_string(&1), "Elixir.Headcount"))
      |> Enum.map(&Bench.Design.queue_len/1)
      |> Enum.sum()

    info = Headcount.info()

    nif =
      Enum.reduce(
        [:pending_monitors, :watcher_queue, :pending],
        0,
        &(&2 + (Map.get(info, &1) || 0))
      )

    mailboxes + nif
  end
end
