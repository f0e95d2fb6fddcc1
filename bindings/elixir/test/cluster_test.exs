defmodule Headcount.ClusterTest do
  # `cluster: :erlang`: three BEAM nodes on this host, counting each other's users over the
  # Erlang distribution.
  use ExUnit.Case, async: false
  import Headcount.TestHelpers

  @moduletag :distributed
  @tick 50
  # Far longer than any wait below: a node's counts that leave within them left because its
  # connection went down (or it said goodbye), not because it fell silent.
  @dead_after 60_000

  defp peer(name) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(:erlang.get_cookie())]

    {:ok, pid, node} =
      :peer.start(%{name: name, host: ~c"127.0.0.1", longnames: true, args: args, wait_boot: 30_000})

    {pid, node}
  end

  defp on(node, f, args), do: :rpc.call(node, Headcount.TestRemote, f, args, 30_000)

  defp counts(nodes, topic), do: for(n <- nodes, do: on(n, :count, [topic]))

  defp all_count(nodes, topic, want) do
    assert eventually(fn -> counts(nodes, topic) == Enum.map(nodes, fn _ -> want end) end, 10_000) ==
             true,
           "#{topic}: #{inspect(counts(nodes, topic))}, want #{want} on each of #{inspect(nodes)}"
  end

  setup do
    suffix = System.unique_integer([:positive])
    {p1, n1} = peer(:"hc_a#{suffix}")
    {p2, n2} = peer(:"hc_b#{suffix}")
    true = :rpc.call(n1, Node, :connect, [n2])
    opts = [cluster: :erlang, tick: @tick, dead_after: @dead_after]
    for n <- [node(), n1, n2], do: :ok = on(n, :start, [opts])

    on_exit(fn ->
      Headcount.stop()

      for p <- [p1, p2],
          do:
            (try do
               :peer.stop(p)
             catch
               _, _ -> :ok
             end)
    end)

    %{n1: n1, n2: n2}
  end

  test "three nodes count each other's users; exits, node loss and goodbyes leave everywhere",
       %{n1: n1, n2: n2} do
    nodes = [node(), n1, n2]
    [a | _] = on(n1, :holders, ["room", 10])
    _ = on(n2, :holders, ["room", 5])
    local = holder(["room"])
    all_count(nodes, "room", 16)

    # A process of another node is counted by its own node, not on its behalf here.
    assert_raise ArgumentError, ~r/not a local process/, fn -> Headcount.join(a, "room") end

    # The peers know each other by Erlang node name.
    names = for n <- Headcount.nodes(), n.alive, do: n.erlang_node
    assert Enum.sort(names) == Enum.sort([n1, n2])

    # A process on another node exits: every node sees it.
    Process.exit(a, :kill)
    all_count(nodes, "room", 15)

    # SIGKILL a node: its connection goes down, and its 5 users leave the other nodes' counts
    # at once (dead_after is a minute).
    os_pid = :rpc.call(n2, :os, :getpid, [])
    {_, 0} = System.cmd("kill", ["-9", List.to_string(os_pid)])
    all_count([node(), n1], "room", 10)

    # A clean stop says goodbye: its 9 users leave at once too.
    :ok = :rpc.call(n1, Headcount, :stop, [])

    assert eventually(fn -> Headcount.sync() == :ok and Headcount.count("room") == 1 end, 10_000) ==
             true

    send(local, :stop)
  end
end
