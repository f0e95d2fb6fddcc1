defmodule Headcount.Native do
  @moduledoc false
  # The NIF (native/headcount_nif, in Rust). Each function below is replaced when the library
  # loads; called before that (the library failed to load), they raise.

  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:headcount), ~c"native/headcount_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :ok

      {:error, {reason, text}} ->
        require Logger
        Logger.error("headcount: cannot load its NIF from #{path}.so: #{reason}: #{text}")
        :abort
    end
  end

  defp nif, do: :erlang.nif_error(:headcount_nif_not_loaded)

  def start(_options, _server), do: nif()
  def stop, do: nif()
  def ack, do: nif()
  def join(_topic), do: nif()
  def join_pid(_pid, _topic), do: nif()
  def leave(_topic), do: nif()
  def leave_pid(_pid, _topic), do: nif()
  def presences(_pid), do: nif()
  def count(_topic), do: nif()
  def count_local(_topic), do: nif()
  def total, do: nif()
  def total_local, do: nif()
  def top(_k), do: nif()
  def sync, do: nif()
  def nodes, do: nif()
  def info, do: nif()
  def transport_attach(_pid), do: nif()
  def transport_take, do: nif()
  def transport_deliver(_peer, _bytes), do: nif()
  def transport_gone(_peer), do: nif()
end
