defmodule Headcount.TestHelpers do
  @moduledoc false

  @doc """
  Polls `fun` until it returns a value other than `false` or `nil`, for at most `ms`; returns
  that value, or the last one.
  """
  def eventually(fun, ms \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    case fun.() do
      v when v not in [false, nil] ->
        v

      other ->
        if System.monotonic_time(:millisecond) > deadline do
          other
        else
          Process.sleep(10)
          poll(fun, deadline)
        end
    end
  end

  @doc "Starts Headcount for one test and stops it after."
  def start_headcount(opts) do
    Headcount.stop()
    {:ok, pid} = Headcount.start_link(opts)
    Process.unlink(pid)
    ExUnit.Callbacks.on_exit(fn -> Headcount.stop() end)
    pid
  end

  @doc "A process that joins `topics` and waits: send it `{:run, fun}` or `:stop`."
  def holder(topics) do
    parent = self()

    pid =
      spawn(fn ->
        for t <- topics, do: :ok = Headcount.join(t)
        send(parent, {:joined, self()})
        holder_loop()
      end)

    receive do
      {:joined, ^pid} -> pid
    after
      5_000 -> raise "holder did not join"
    end
  end

  defp holder_loop do
    receive do
      {:run, fun} ->
        fun.()
        holder_loop()

      :stop ->
        :ok
    end
  end
end

defmodule Headcount.TestRemote do
  @moduledoc false
  # What the cluster tests run on peer nodes (by :rpc, so it must be compiled code).

  @doc "Starts Elixir's applications and Headcount (unlinked from the caller) on this node."
  def start(opts) do
    {:ok, _} = Application.ensure_all_started(:logger)
    Headcount.stop()
    {:ok, pid} = Headcount.start_link(opts)
    Process.unlink(pid)
    :ok
  end

  @doc "`n` processes on this node, each present in `topic`; returns their pids."
  def holders(topic, n) do
    for _ <- 1..n, do: Headcount.TestHelpers.holder([topic])
  end

  @doc "The count of `topic` after a tick here."
  def count(topic) do
    :ok = Headcount.sync()
    Headcount.count(topic)
  end
end
