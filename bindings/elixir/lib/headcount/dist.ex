defmodule Headcount.Dist do
  @moduledoc false
  # `cluster: :erlang`: the engine's datagrams over the Erlang distribution the application
  # already has. One process per node, registered as `Headcount.Dist`, carries them:
  #
  # - out: the NIF sends it `:headcount_out` when datagrams wait; it takes them and sends each
  #   to `{Headcount.Dist, node}` on every connected node (or the one it is for), with
  #   `:noconnect` and `:nosuspend`: it never waits to connect or for a busy connection, and a
  #   datagram that cannot go is dropped like a lost UDP datagram (the protocol repairs it);
  # - in: `{:headcount_dgram, from_node, bytes}` from a peer goes to the engine with that node's
  #   number (a local one, kept in the `:headcount_peers` table for `Headcount.nodes/0`);
  # - `{:nodedown, node}`: the engine drops that node's counts at once (`peer_gone`), instead
  #   of waiting dead_after for datagrams that cannot come. A node that connects again is
  #   admitted by its next datagram.
  #
  # Every datagram is sealed with the cluster key (by default derived from the cookie): what
  # arrives here from anything but a peer engine of this cluster counts nothing.

  use GenServer

  alias Headcount.Native

  @table :headcount_peers

  def start_link(_), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @doc "The Erlang node the engine numbers `peer`, if known."
  def node_of(peer) do
    case :ets.whereis(@table) do
      :undefined ->
        nil

      _ ->
        case :ets.lookup(@table, {:peer, peer}),
          do:
            (
              [{_, n}] -> n
              [] -> nil
            )
    end
  end

  @doc "Sends the datagrams waiting now, from the calling process (used at shutdown)."
  def carry, do: send_out(Native.transport_take())

  @impl true
  def init(_) do
    if :ets.whereis(@table) == :undefined do
      :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    end

    :ok = :net_kernel.monitor_nodes(true)
    :ok = Native.transport_attach(self())
    # Datagrams queued before the waker was registered.
    send(self(), :headcount_out)
    {:ok, %{}}
  end

  @impl true
  def handle_info(:headcount_out, state) do
    carry()
    {:noreply, state}
  end

  def handle_info({:headcount_dgram, from, bytes}, state) when is_atom(from) and is_binary(bytes) do
    _ = Native.transport_deliver(peer_of(from), bytes)
    {:noreply, state}
  end

  def handle_info({:nodedown, node}, state) do
    case :ets.lookup(@table, {:node, node}) do
      [{_, peer}] -> Native.transport_gone(peer)
      [] -> :ok
    end

    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @doc "Sends `datagrams` (`[{:all | peer, bytes}]`) from the calling process."
  def send_out(list) when is_list(list) do
    me = node()

    for {to, bytes} <- list do
      msg = {:headcount_dgram, me, bytes}

      case to do
        :all -> for n <- Node.list(), do: post(n, msg)
        peer -> if n = node_of(peer), do: post(n, msg)
      end
    end

    :ok
  end

  # The engine stopped (at shutdown) or there is no transport: nothing to carry.
  def send_out(_), do: :ok

  defp post(node, msg), do: :erlang.send({__MODULE__, node}, msg, [:noconnect, :nosuspend])

  defp peer_of(node) do
    case :ets.lookup(@table, {:node, node}) do
      [{_, peer}] ->
        peer

      [] ->
        peer = :ets.update_counter(@table, :next, 1, {:next, 0})
        :ets.insert(@table, [{{:node, node}, peer}, {{:peer, peer}, node}])
        peer
    end
  end
end
