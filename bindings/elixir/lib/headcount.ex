defmodule Headcount do
  @moduledoc """
  Exact, cluster-wide counts of connected users per topic, for Elixir and Erlang: a process's
  presences end when the process does.

  In a Phoenix channel:

      def join("room:" <> _ = topic, _params, socket) do
        :ok = Headcount.join(topic)     # counted until this process leaves or exits
        {:ok, socket}
      end

      Headcount.count("room:42")        # the cluster-wide count

  and in the application's supervision tree:

      {Headcount, cluster: :erlang}     # over the Erlang distribution the app already has
      # or over UDP, with `headcount serve` and other headcount nodes:
      {Headcount, cluster: [multicast: {{239, 255, 70, 77}, 7380}], key_file: "/etc/headcount/key"}

  ## Presences

  `join/1` counts the calling process in a topic; `join/2` another local process. Joining twice
  counts twice (two tabs); `leave/1` removes one. When the process exits (normally, by a crash,
  by `Process.exit(pid, :kill)`), every presence it holds leaves: the NIF monitors it
  (`enif_monitor_process`), and nothing on its heap refers to a presence, so no garbage
  collection can end one early. On the other nodes the leave shows within a tick.

  Joins and leaves are plain NIF calls on the calling scheduler (no message, no GenServer, no
  dirty scheduler): each scheduler thread counts through a shard of its own. Counts are as of
  the engine's last tick (default 100 ms); `sync/0` runs a tick now.

  ## Options

    * `:shards` - counter shards, default one per scheduler (`:erlang.system_info(:schedulers)`)
    * `:tick` - the reducer period in milliseconds (default 100)
    * `:dead_after` - milliseconds without a datagram after which a peer node's counts are
      dropped (default 3000 or 30 ticks, whichever is longer)
    * `:cluster` - none (this node alone, the default); `:erlang`; or a keyword list:
      `[multicast: {ip, port}, interface: ip]`, or `[unicast: {ip, port} | port,
      peers: [{ip, port} | "ip:port", ...], peers_dns: "name:port" | [...], dns_interval: ms]`
    * `:cluster_name` - nodes of other clusters are ignored (default `"headcount"`)
    * `:key_file` - the cluster key's file; or `:key`, the key itself. With `cluster: :erlang`
      and neither, the key is derived from the node's cookie.
    * `:insecure` - allow a non-loopback UDP cluster without a key
    * `:node_name` - a stable name for this node's id (default with `cluster: :erlang`: the
      Erlang node name, so a restarted node replaces its old counts at once)
    * `:max_topics` - the topic table's capacity (default 2^20)
    * `:max_subscriber_queue` - a subscriber with more messages queued than this is skipped
      (and told it lagged when it catches up); default 1000
    * `:parity` - repair lost datagrams with parity (default `true`); `false` while some nodes
      of the cluster run a version without it
    * `:relay_fanout` - with unicast peers and a key: the relay tree's fan-out (default 16;
      0 never relays, else 2 to 255); `0` while some nodes run a version without relaying

  An unknown option or a bad value raises `ArgumentError` naming it.

  ## Node loss

  With `cluster: :erlang`, a node whose connection goes down (`:nodedown`) has its counts
  dropped on every other node at once. Over UDP, a node that stops sending is dropped after
  `:dead_after`; one that stops cleanly says goodbye and is dropped at once.
  """

  alias Headcount.Native

  @typedoc "A topic: a UTF-8 binary of at most 255 bytes."
  @type topic :: String.t()

  @doc "The child spec for a supervision tree: `{Headcount, opts}`."
  def child_spec(opts) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker, shutdown: 5000}
  end

  @doc """
  Starts the engine and the process that serves it, registered as `Headcount`. Raises
  `ArgumentError` for bad options; `{:error, reason}` if the engine cannot start (a port in
  use, an unreadable key file) or already runs with other options.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: Headcount.Server.start_link(Headcount.Options.parse(opts))

  @doc "Stops the engine: a goodbye to the cluster, and every presence of this node ends."
  @spec stop() :: :ok
  def stop do
    case GenServer.whereis(__MODULE__) do
      # An engine whose server died and was not restarted still runs: stop it all the same.
      nil ->
        _ = Native.stop()
        :ok

      pid ->
        GenServer.stop(pid, :normal)
    end
  end

  @doc """
  Counts the calling process in `topic` until it calls `leave/1` or exits. Each call is one
  presence: joining twice counts twice.
  """
  @spec join(topic()) :: :ok
  def join(topic) when is_binary(topic) and byte_size(topic) <= 255 do
    case Native.join(topic) do
      :ok -> :ok
      other -> fail(other, topic)
    end
  end

  def join(topic), do: bad_topic(topic)

  @doc """
  Counts the local process `pid` in `topic` until it leaves or exits (monitored the same way as
  the caller of `join/1`). `{:error, :noproc}` if it is not alive.
  """
  @spec join(pid(), topic()) :: :ok | {:error, :noproc}
  def join(pid, topic) when is_pid(pid) and is_binary(topic) and byte_size(topic) <= 255 do
    case Native.join_pid(pid, topic) do
      :ok -> :ok
      :noproc -> {:error, :noproc}
      other -> fail(other, topic, pid)
    end
  end

  def join(pid, topic) when is_pid(pid), do: bad_topic(topic)
  def join(pid, _topic), do: raise(ArgumentError, "expected a pid, got: #{inspect(pid)}")

  @doc "One presence of the calling process in `topic` leaves. `{:error, :not_joined}` if it has none."
  @spec leave(topic()) :: :ok | {:error, :not_joined}
  def leave(topic) when is_binary(topic) and byte_size(topic) <= 255 do
    case Native.leave(topic) do
      :ok -> :ok
      :not_joined -> {:error, :not_joined}
      other -> fail(other, topic)
    end
  end

  def leave(topic), do: bad_topic(topic)

  @doc "One presence of the local process `pid` in `topic` leaves."
  @spec leave(pid(), topic()) :: :ok | {:error, :not_joined}
  def leave(pid, topic) when is_pid(pid) and is_binary(topic) and byte_size(topic) <= 255 do
    case Native.leave_pid(pid, topic) do
      :ok -> :ok
      :not_joined -> {:error, :not_joined}
      other -> fail(other, topic, pid)
    end
  end

  def leave(pid, topic) when is_pid(pid), do: bad_topic(topic)
  def leave(pid, _topic), do: raise(ArgumentError, "expected a pid, got: #{inspect(pid)}")

  @doc "The topics the local process `pid` is present in, one entry per presence."
  @spec presences(pid()) :: [topic()]
  def presences(pid) when is_pid(pid) do
    case Native.presences(pid) do
      list when is_list(list) -> list
      other -> fail(other, nil, pid)
    end
  end

  def presences(pid), do: raise(ArgumentError, "expected a pid, got: #{inspect(pid)}")

  @doc "The cluster-wide count of `topic` as of the last tick."
  @spec count(topic()) :: non_neg_integer()
  def count(topic) when is_binary(topic) and byte_size(topic) <= 255,
    do: read(Native.count(topic), topic)

  def count(topic), do: bad_topic(topic)

  @doc "This node's count of `topic` as of the last tick."
  @spec count_local(topic()) :: non_neg_integer()
  def count_local(topic) when is_binary(topic) and byte_size(topic) <= 255,
    do: read(Native.count_local(topic), topic)

  def count_local(topic), do: bad_topic(topic)

  @doc "The cluster-wide total over all topics."
  @spec total() :: non_neg_integer()
  def total, do: read(Native.total(), nil)

  @doc "This node's total over all topics."
  @spec total_local() :: non_neg_integer()
  def total_local, do: read(Native.total_local(), nil)

  @doc "The `k` topics with the largest cluster-wide counts, largest first: `[{topic, count}]`."
  @spec top(non_neg_integer()) :: [{topic(), non_neg_integer()}]
  def top(k) when is_integer(k) and k >= 0, do: read(Native.top(min(k, 1_000_000)), nil)
  def top(k), do: raise(ArgumentError, "top/1 expects a non-negative integer, got: #{inspect(k)}")

  @doc """
  The cluster's other nodes, live and recently dead: maps with `:id`, `:addr`, `:alive`,
  `:converged`, `:topics`, `:total`, `:last_heard_ms`, `:found`, and with `cluster: :erlang`
  `:erlang_node`.
  """
  @spec nodes() :: [map()]
  def nodes do
    for n <- read(Native.nodes(), nil) do
      case n.peer do
        nil -> Map.delete(n, :peer)
        p -> n |> Map.delete(:peer) |> Map.put(:erlang_node, Headcount.Dist.node_of(p))
      end
    end
  end

  @doc "The engine's settings and counters (shards, tick, presences held, topics...)."
  @spec info() :: map()
  def info, do: read(Native.info(), nil)

  @doc "Runs a tick now and waits for it: everything joined or left before is in the counts."
  @spec sync() :: :ok
  def sync, do: read(Native.sync(), nil)

  @doc """
  Sends the calling process `{:headcount, :changes, [{topic, count}, ...]}` once per tick in
  which counts changed (like `Phoenix.Tracker`'s `handle_diff`), until it exits or calls
  `unsubscribe/0`.

  A subscriber whose mailbox holds more than `:max_subscriber_queue` messages is skipped until
  it catches up; it then gets `{:headcount, :lagged, ticks}` followed by one `:changes` message
  with every topic that changed meanwhile (latest counts): nothing is lost, and a slow
  subscriber never stalls the engine. (`{:headcount, :lost, ticks}`, which the engine sends only
  if its own feed fell behind, means changes were lost: read the counts you need again.)

  Subscriptions belong to the `Headcount` server: if it crashes (counting goes on), the
  restarted server has none. A subscriber that must outlive that monitors
  `Process.whereis(Headcount)` and subscribes again.
  """
  @spec subscribe() :: :ok
  def subscribe, do: GenServer.call(server!(), {:subscribe, self()})

  @doc "Stops the `subscribe/0` messages."
  @spec unsubscribe() :: :ok
  def unsubscribe, do: GenServer.call(server!(), {:unsubscribe, self()})

  defp server! do
    GenServer.whereis(__MODULE__) || not_started()
  end

  defp read(:not_started, _), do: not_started()
  defp read(:bad_topic, topic), do: bad_topic(topic)
  defp read(value, _), do: value

  defp fail(what, topic, pid \\ nil)
  defp fail(:not_started, _topic, _pid), do: not_started()
  defp fail(:bad_topic, topic, _pid), do: bad_topic(topic)

  defp fail(:not_local, _topic, pid),
    do:
      raise(ArgumentError, "#{inspect(pid)} is not a local process: the node it runs on counts it")

  defp fail(other, topic, _pid),
    do: raise(ArgumentError, "headcount: unexpected #{inspect(other)} for #{inspect(topic)}")

  defp not_started do
    raise RuntimeError, "headcount is not started: add {Headcount, opts} to your supervision tree"
  end

  defp bad_topic(topic) when is_binary(topic) and byte_size(topic) > 255,
    do:
      raise(
        ArgumentError,
        "a topic is at most 255 bytes, got #{byte_size(topic)}: #{inspect(binary_part(topic, 0, 40))}..."
      )

  defp bad_topic(topic) when is_binary(topic),
    do: raise(ArgumentError, "a topic must be valid UTF-8, got: #{inspect(topic)}")

  defp bad_topic(topic),
    do: raise(ArgumentError, "a topic must be a string (binary), got: #{inspect(topic)}")
end
