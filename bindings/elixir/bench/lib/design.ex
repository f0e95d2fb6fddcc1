defmodule Bench.Design do
  @moduledoc """
  One design under test. `setup/1` and `teardown/0` run inside the long-lived `Bench.Node`
  process of every node (so anything started with `start_link` lives as long as the scenario);
  `join/1` runs in the joining process; `count/1` and `total/0` are the cluster-wide reads
  (on every node); `backlog/0` is the number of messages queued in the design's own processes on
  this node (0 for a design without processes) — the "does it keep up" signal.
  """

  @type opts :: keyword()

  @callback name() :: String.t()
  @callback available?() :: boolean()
  @doc "Period after which a change is visible on the other nodes (ms), or nil (read-time fan-out / local)."
  @callback tick_ms(opts) :: pos_integer() | nil
  @callback setup(opts) :: :ok
  @callback teardown() :: :ok
  @callback join(topic :: binary()) :: any()
  @callback count(topic :: binary()) :: integer()
  @callback total() :: integer()
  @callback backlog() :: non_neg_integer()

  def queue_len(nil), do: 0

  def queue_len(pid) when is_pid(pid) do
    case Process.info(pid, :message_queue_len) do
      {:message_queue_len, n} -> n
      nil -> 0
    end
  end

  def queue_len(name) when is_atom(name), do: queue_len(Process.whereis(name))
end
