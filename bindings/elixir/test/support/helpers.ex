defmodule Headcount.TestHelpers do
  @moduledoc false

  @doc "Polls `fun` until it returns true, for at most `ms`; returns the last value of `fun`."
  def eventually(fun, ms \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    case fun.() do
      true ->
        true

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
