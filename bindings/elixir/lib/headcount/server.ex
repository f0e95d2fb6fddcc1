defmodule Headcount.Server do
  @moduledoc false
  # The process `{Headcount, opts}` starts: it starts the engine (the NIF's), starts the
  # transport process for `cluster: :erlang`, and fans the per-tick changes out to subscribers.
  # It is never on the path of a join or a leave.
  #
  # Lifecycle: a normal shutdown (the supervisor stopping it, `Headcount.stop/0`) stops the
  # engine, with a goodbye to the cluster. A crash does not: the engine and every presence keep
  # running, and the restarted server (same options) attaches to them again.
  #
  # Subscribers: each tick's changes go to each subscriber whose mailbox holds at most
  # `max_subscriber_queue` messages. One over it is skipped, and its changes are merged (a
  # topic's latest count wins) until it catches up; then it gets `{:headcount, :lagged, ticks}`
  # and one `:changes` message with everything that changed meanwhile. A slow subscriber costs
  # one map of topics, never the engine or the other subscribers.

  use GenServer
  require Logger

  alias Headcount.Native

  def start_link({native, settings}) do
    GenServer.start_link(__MODULE__, {native, settings}, name: Headcount)
  end

  @impl true
  def init({native, settings}) do
    Process.flag(:trap_exit, true)

    case Native.start(native, self()) do
      {:ok, how} ->
        if how == :attached, do: Logger.info("headcount: attached to the running engine")

        case start_dist(native.cluster) do
          {:ok, dist} ->
            {:ok, %{settings: settings, subs: %{}, dist: dist, timer: nil}}

          {:error, reason} ->
            Native.stop()
            {:stop, {:transport, reason}}
        end

      {:error, :already_started} ->
        {:stop,
         {:already_started,
          "headcount is running with other options: stop it first (Headcount.stop/0)"}}

      {:error, reason} ->
        {:stop, {:headcount, reason}}
    end
  end

  @impl true
  def handle_call({:subscribe, pid}, _from, state) do
    state =
      if Map.has_key?(state.subs, pid) do
        state
      else
        ref = Process.monitor(pid)
        put_in(state.subs[pid], %{ref: ref, behind: nil, ticks: 0})
      end

    {:reply, :ok, state}
  end

  def handle_call({:unsubscribe, pid}, _from, state) do
    case Map.pop(state.subs, pid) do
      {nil, _} ->
        {:reply, :ok, state}

      {sub, subs} ->
        Process.demonitor(sub.ref, [:flush])
        {:reply, :ok, %{state | subs: subs}}
    end
  end

  def handle_call(:subscribers, _from, state), do: {:reply, Map.keys(state.subs), state}

  @impl true
  def handle_info({:headcount_changes, lost, changes}, state) do
    if lost > 0 do
      for pid <- Map.keys(state.subs), do: send(pid, {:headcount, :lost, lost})
    end

    subs =
      Map.new(state.subs, fn {pid, sub} -> {pid, deliver(pid, sub, changes, state.settings)} end)

    Native.ack()
    {:noreply, catch_up_later(%{state | subs: subs})}
  end

  # A subscriber that was behind gets its merged changes once it caught up, even if nothing
  # changed since.
  def handle_info(:catch_up, state) do
    subs =
      Map.new(state.subs, fn
        {pid, %{behind: b} = sub} when b != nil -> {pid, deliver(pid, sub, [], state.settings)}
        other -> other
      end)

    {:noreply, catch_up_later(%{state | subs: subs, timer: nil})}
  end

  def handle_info({:DOWN, _ref, :process, pid, _}, state) do
    {:noreply, %{state | subs: Map.delete(state.subs, pid)}}
  end

  def handle_info({:EXIT, pid, reason}, %{dist: pid} = state) do
    {:stop, {:transport_exited, reason}, state}
  end

  def handle_info({:EXIT, _pid, reason}, state) when reason in [:normal, :shutdown] do
    {:noreply, state}
  end

  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    if reason == :normal or reason == :shutdown or match?({:shutdown, _}, reason) do
      # The goodbye the engine queued, sent before the transport goes (peers drop this node's
      # counts at once instead of after dead_after).
      left = Native.stop()
      if state.dist, do: Headcount.Dist.send_out(left)
    end

    :ok
  end

  defp deliver(pid, sub, changes, settings) do
    queued =
      case Process.info(pid, :message_queue_len) do
        {:message_queue_len, n} -> n
        nil -> 0
      end

    cond do
      queued > settings.max_subscriber_queue ->
        behind = merge(sub.behind || %{}, changes)
        %{sub | behind: behind, ticks: sub.ticks + if(changes == [], do: 0, else: 1)}

      sub.behind ->
        send(pid, {:headcount, :lagged, sub.ticks})
        send(pid, {:headcount, :changes, Map.to_list(merge(sub.behind, changes))})
        %{sub | behind: nil, ticks: 0}

      true ->
        send(pid, {:headcount, :changes, changes})
        sub
    end
  end

  defp start_dist(:erlang), do: Headcount.Dist.start_link([])
  defp start_dist(_), do: {:ok, nil}

  defp catch_up_later(%{timer: nil} = state) do
    if Enum.any?(state.subs, fn {_, s} -> s.behind != nil end),
      do: %{state | timer: Process.send_after(self(), :catch_up, 50)},
      else: state
  end

  defp catch_up_later(state), do: state

  defp merge(map, changes), do: Enum.reduce(changes, map, fn {t, c}, m -> Map.put(m, t, c) end)
end
