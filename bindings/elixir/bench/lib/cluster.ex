defmodule Bench.Cluster do
  @moduledoc "The bench's nodes: this one, plus `:peer` nodes on this host (OTP 25 `:peer`)."

  def nodes(1), do: ensure_agents([node()])

  def nodes(n) do
    ensure_distributed()
    have = Process.get(:bench_peers, [])
    new = for i <- (length(have) + 1)..(n - 1)//1, do: start_peer(i)
    Process.put(:bench_peers, have ++ new)
    ensure_agents([node() | Enum.map(Enum.take(have ++ new, n - 1), &elem(&1, 1))])
  end

  def stop_peers do
    for {pid, _node} <- Process.get(:bench_peers, []), do: :peer.stop(pid)
    Process.put(:bench_peers, [])
    :ok
  end

  defp ensure_agents(nodes) do
    for n <- nodes do
      if :erpc.call(n, Process, :whereis, [Bench.Node]) == nil,
        do: :ok = :erpc.call(n, Bench.Node, :start, [])
    end

    nodes
  end

  def ensure_distributed do
    unless Node.alive?() do
      {_, 0} = System.cmd("epmd", ["-daemon"])
      {:ok, _} = :net_kernel.start([:"hcbench#{System.pid()}", :shortnames])
    end

    :ok
  end

  defp start_peer(i) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    cookie = Atom.to_charlist(Node.get_cookie())
    # the same emulator flags as this node (+P, +sbwt ...), from ELIXIR_ERL_OPTIONS
    flags =
      (System.get_env("ELIXIR_ERL_OPTIONS") || "")
      |> String.split()
      |> Enum.map(&String.to_charlist/1)

    args = [~c"-setcookie", cookie | flags ++ paths]

    {:ok, pid, node} =
      :peer.start_link(%{name: :"hcbench#{System.pid()}_peer#{i}", args: args, wait_boot: 30_000})

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:elixir])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:logger])
    {pid, node}
  end
end
