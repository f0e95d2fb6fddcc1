defmodule Bench.Design.Noop do
  @moduledoc """
  Calibration only: `join/1` does nothing. Its "max sustained churn" is the ceiling of the load
  generator itself (spawning, stopping and scheduling the joining processes) on this machine.
  """
  @behaviour Bench.Design

  @impl true
  def name, do: "no-op (harness ceiling)"
  @impl true
  def available?, do: true
  @impl true
  def tick_ms(_), do: nil
  @impl true
  def setup(_opts), do: :ok
  @impl true
  def teardown, do: :ok
  @impl true
  def join(_topic), do: :ok
  @impl true
  def count(_topic), do: :unsupported
  @impl true
  def total, do: :unsupported
  @impl true
  def backlog, do: 0
end
