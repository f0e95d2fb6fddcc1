defmodule HeadcountTest do
  # One engine per VM: the tests take turns.
  use ExUnit.Case, async: false
  import Headcount.TestHelpers

  @tick 20

  setup do
    start_headcount(tick: @tick)
    :ok
  end

  defp count_now(topic) do
    :ok = Headcount.sync()
    Headcount.count(topic)
  end

  # A leave happens when the VM runs the process's monitor, right after it exits; the count
  # shows it at the next tick.
  defp settles(topic, expected) do
    assert eventually(fn -> count_now(topic) == expected end, 2_000) == true,
           "#{topic}: #{count_now(topic)} != #{expected}"
  end

  test "joining twice counts twice; leave removes one" do
    :ok = Headcount.join("tabs")
    :ok = Headcount.join("tabs")
    assert count_now("tabs") == 2
    assert Headcount.presences(self()) == ["tabs", "tabs"]
    assert :ok = Headcount.leave("tabs")
    assert count_now("tabs") == 1
    assert :ok = Headcount.leave("tabs")
    assert {:error, :not_joined} = Headcount.leave("tabs")
    assert {:error, :not_joined} = Headcount.leave("never")
    assert count_now("tabs") == 0
    assert Headcount.total() == 0
  end

  test "a process's presences leave when it exits normally, crashes, or is killed" do
    for {how, ending} <- [
          normal: fn -> :ok end,
          crash: fn -> raise "boom" end,
          throw: fn -> exit(:shutdown) end
        ] do
      topic = "exit:#{how}"
      pid = holder([topic, topic, "exit:all"])
      settles(topic, 2)
      ref = Process.monitor(pid)
      send(pid, {:run, fn -> ending.() end})
      if how == :normal, do: send(pid, :stop)
      assert_receive {:DOWN, ^ref, :process, ^pid, _}, 2_000
      settles(topic, 0)
    end

    pid = holder(["exit:kill", "exit:all"])
    settles("exit:kill", 1)
    Process.exit(pid, :kill)
    settles("exit:kill", 0)
    settles("exit:all", 0)
    assert Headcount.info().processes == 0
    assert Headcount.info().presences == 0
  end

  test "a presence never leaves while its process lives, whatever the garbage collector does" do
    pids = for _ <- 1..50, do: holder(["alive"])
    settles("alive", 50)

    for _ <- 1..5 do
      for p <- pids do
        # Garbage on the process's heap, collected; nothing of a presence is on it.
        send(p, {:run, fn -> _ = Enum.map(1..1000, &Integer.to_string/1) end})
        :erlang.garbage_collect(p)
      end

      :erlang.garbage_collect()
      assert count_now("alive") == 50
    end

    for p <- pids, do: send(p, :stop)
    settles("alive", 0)
  end

  test "join/2 counts another local process until it exits; a dead pid is refused" do
    pid = spawn(fn -> receive do: (:stop -> :ok) end)
    assert :ok = Headcount.join(pid, "proxy")
    assert :ok = Headcount.join(pid, "proxy")
    assert count_now("proxy") == 2
    assert :ok = Headcount.leave(pid, "proxy")
    assert count_now("proxy") == 1
    send(pid, :stop)
    settles("proxy", 0)
    assert {:error, :noproc} = Headcount.join(pid, "proxy")
    assert count_now("proxy") == 0
  end

  test "every presence leaves exactly, though its process moved between schedulers" do
    schedulers = :erlang.system_info(:schedulers_online)
    parent = self()
    n = 400

    # All start on this process's scheduler; busy ones are stolen by the idle schedulers, and
    # they exit wherever they run then (the leave runs on the scheduler that handles the exit).
    pids =
      for _ <- 1..n do
        spawn(fn ->
          :ok = Headcount.join("moving")
          first = :erlang.system_info(:scheduler_id)
          receive do: (:go -> :ok)
          _ = Enum.reduce(1..20_000, 0, fn i, acc -> rem(acc + i * i, 1_000_003) end)
          send(parent, {:moved, first != :erlang.system_info(:scheduler_id)})
        end)
      end

    settles("moving", n)
    for p <- pids, do: send(p, :go)
    moved = for _ <- pids, do: receive(do: ({:moved, m} -> m))
    settles("moving", 0)
    assert Headcount.info().processes == 0

    if schedulers > 1 do
      assert Enum.count(moved, & &1) > 0, "no process changed scheduler: the test showed nothing"
    else
      IO.puts("one scheduler: no process can move; the exact leave was still checked")
    end
  end

  test "each scheduler counts through a shard of its own" do
    schedulers = :erlang.system_info(:schedulers)
    info = Headcount.info()
    assert info.shards == schedulers

    pids = for i <- 1..200, do: holder(["shard:#{rem(i, 5)}"])
    settles("shard:0", 40)
    info = Headcount.info()
    # No join went through the shared core: every scheduler that joined had a shard.
    assert info.shared_ops == 0
    assert info.free_shards < schedulers
    for p <- pids, do: send(p, :stop)
    settles("shard:0", 0)
  end

  test "subscribers get each tick's changes" do
    :ok = Headcount.subscribe()
    pid = holder(["sub:a", "sub:a", "sub:b"])
    assert_receive {:headcount, :changes, changes}, 2_000
    changes = wait_for(Map.new(changes), %{"sub:a" => 2, "sub:b" => 1})
    assert changes["sub:a"] == 2 and changes["sub:b"] == 1
    send(pid, :stop)
    assert wait_for(%{}, %{"sub:a" => 0, "sub:b" => 0}) == %{"sub:a" => 0, "sub:b" => 0}
    :ok = Headcount.unsubscribe()
  end

  # Merges `{:headcount, :changes, ...}` messages into `seen` until it holds `want`.
  defp wait_for(seen, want, deadline \\ nil) do
    deadline = deadline || System.monotonic_time(:millisecond) + 3_000

    if Map.take(seen, Map.keys(want)) == want do
      Map.take(seen, Map.keys(want))
    else
      left = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {:headcount, :changes, c} -> wait_for(Map.merge(seen, Map.new(c)), want, deadline)
      after
        left -> seen
      end
    end
  end

  test "a slow subscriber is skipped, then told it lagged, with nothing lost" do
    start_headcount(tick: @tick, max_subscriber_queue: 5)
    parent = self()

    sub =
      spawn(fn ->
        :ok = Headcount.subscribe()
        send(parent, :subscribed)
        # Stuck: its mailbox grows past the limit while counts change.
        receive do: (:read -> :ok)
        send(parent, {:got, collect([])})
      end)

    assert_receive :subscribed
    for i <- 1..10, do: send(sub, {:noise, i})
    pids = for i <- 1..5, do: holder(["lag:#{i}"])
    settles("lag:5", 1)
    send(hd(pids), :stop)
    settles("lag:1", 0)
    # The count is read from the engine; the changes reach the server through the change
    # feed a little later: wait until the server has them (and held them back for the stuck
    # subscriber) before looking.
    behind(sub, "lag:1", 0)
    # The server skipped it: nothing of it queued behind the noise.
    {:messages, queued} = Process.info(sub, :messages)
    assert Enum.all?(queued, &match?({:noise, _}, &1))
    send(sub, :read)
    assert_receive {:got, got}, 5_000
    assert Enum.any?(got, &match?({:headcount, :lagged, n} when n >= 1, &1))
    merged = for {:headcount, :changes, c} <- got, {t, n} <- c, into: %{}, do: {t, n}
    assert merged["lag:1"] == 0
    for i <- 2..5, do: assert(merged["lag:#{i}"] == 1)
    for p <- tl(pids), do: send(p, :stop)
  end

  # Waits (at most 5 s) until the server holds `topic` at `count` for subscriber `sub`, which
  # it skips.
  defp behind(sub, topic, count, tries \\ 500) do
    held = get_in(:sys.get_state(Headcount), [:subs, sub, :behind])

    cond do
      is_map(held) and Map.get(held, topic) == count ->
        :ok

      tries == 0 ->
        flunk("the server never held #{topic} = #{count} back: #{inspect(held)}")

      true ->
        Process.sleep(10)
        behind(sub, topic, count, tries - 1)
    end
  end

  # Everything but the noise, for a while.
  defp collect(acc) do
    receive do
      {:noise, _} -> collect(acc)
      m -> collect([m | acc])
    after
      500 -> Enum.reverse(acc)
    end
  end

  test "top, totals, local counts and nodes" do
    pids = for t <- ["t:a", "t:a", "t:a", "t:b", "t:b", "t:c"], do: holder([t])
    settles("t:c", 1)
    assert Headcount.top(2) == [{"t:a", 3}, {"t:b", 2}]
    assert Headcount.total() == 6
    assert Headcount.total_local() == 6
    assert Headcount.count_local("t:a") == 3
    assert Headcount.count("nobody") == 0
    assert Headcount.nodes() == []
    for p <- pids, do: send(p, :stop)
  end

  test "bad arguments raise ArgumentError with a clear message" do
    for {f, pattern} <- [
          {fn -> Headcount.join(42) end, ~r/topic must be a string/},
          {fn -> Headcount.join(:room) end, ~r/topic must be a string/},
          {fn -> Headcount.join(String.duplicate("x", 256)) end, ~r/at most 255 bytes/},
          {fn -> Headcount.join(<<0xFF, 0xFE>>) end, ~r/valid UTF-8/},
          {fn -> Headcount.leave(nil) end, ~r/topic must be a string/},
          {fn -> Headcount.count(~c"room") end, ~r/topic must be a string/},
          {fn -> Headcount.count(<<0xC3>>) end, ~r/valid UTF-8/},
          {fn -> Headcount.count_local(1.5) end, ~r/topic must be a string/},
          {fn -> Headcount.join("not a pid", "room") end, ~r/expected a pid/},
          {fn -> Headcount.top(-1) end, ~r/non-negative integer/},
          {fn -> Headcount.top(:all) end, ~r/non-negative integer/},
          {fn -> Headcount.presences(:me) end, ~r/expected a pid/}
        ] do
      e = assert_raise ArgumentError, f
      assert Exception.message(e) =~ pattern
    end

    # A 255-byte name is fine.
    :ok = Headcount.join(String.duplicate("x", 255))
    assert count_now(String.duplicate("x", 255)) == 1
  end

  test "bad options raise ArgumentError naming the option" do
    for {opts, pattern} <- [
          {[tick: 0], ~r/:tick must be a positive integer/},
          {[tick: "100"], ~r/:tick must be a positive integer/},
          {[shards: -1], ~r/:shards must be a positive integer/},
          {[bogus: 1], ~r/unknown Headcount option :bogus/},
          {[cluster: :udp], ~r/:cluster must be :erlang or a keyword list/},
          {[cluster: [multicast: {{239, 1, 2, 3}, 70_000}]], ~r/:multicast wants/},
          {[cluster: [multicast: "239.1.2.3"]], ~r/:multicast wants/},
          {[cluster: [multicast: {{0xFF12, 0, 0, 0, 0, 0, 0, 1}, 7000}]],
           ~r/:multicast takes an IPv4/},
          {[cluster: [multicast: {{239, 1, 2, 3}, 7000}, interface: "::1"]],
           ~r/:interface takes an IPv4/},
          {[cluster: [multicast: {{239, 1, 2, 3}, 7000}, peers: []]], ~r/excludes/},
          {[cluster: [peers: ["not an address"]]], ~r/:peers wants/},
          {[cluster: [peers_dns: "no-port"]], ~r/:peers_dns wants/},
          {[cluster: [unicast: 7000, interface: {127, 0, 0, 1}]], ~r/:interface is for :multicast/},
          {[cluster: [multicast: {{239, 1, 2, 3}, 7000}, wat: 1]],
           ~r/unknown :cluster option :wat/},
          {[insecure: "yes"], ~r/:insecure must be a boolean/},
          {[parity: "no"], ~r/:parity must be a boolean/},
          {[relay_fanout: -1], ~r/:relay_fanout must be a non-negative integer/},
          {[key: ""], ~r/:key must be a non-empty binary/},
          {[key: "k", key_file: "/k"], ~r/exclude each other/},
          {[cluster_name: :x], ~r/:cluster_name must be a non-empty string/},
          {:not_a_list, ~r/keyword list/}
        ] do
      e = assert_raise ArgumentError, fn -> Headcount.start_link(opts) end
      assert Exception.message(e) =~ pattern
    end
  end

  test "an engine that cannot start says why" do
    Headcount.stop()
    Process.flag(:trap_exit, true)

    assert {:error, {:headcount, msg}} =
             Headcount.start_link(cluster: :erlang, key_file: "/nonexistent/headcount.key")

    assert msg =~ "headcount.key"
    # A port in use: take one, then ask for it.
    {:ok, sock} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(sock)

    assert {:error, {:headcount, msg}} =
             Headcount.start_link(cluster: [unicast: {{127, 0, 0, 1}, port}, peers: []])

    assert msg =~ ~r/in use|bind/i
    :gen_udp.close(sock)
  end

  test "parity and relay_fanout reach the engine's builder" do
    Headcount.stop()
    Process.flag(:trap_exit, true)
    # The builder checks the fan-out: 1 is refused, naming the option.
    assert {:error, {:headcount, msg}} = Headcount.start_link(relay_fanout: 1)
    assert msg =~ "relay_fanout"
    assert {:ok, _} = Headcount.start_link(parity: false, relay_fanout: 0)
    Headcount.stop()
  end

  test "without an engine, calls raise instead of counting nothing" do
    Headcount.stop()
    assert_raise RuntimeError, ~r/not started/, fn -> Headcount.join("x") end
    assert_raise RuntimeError, ~r/not started/, fn -> Headcount.count("x") end
    assert_raise RuntimeError, ~r/not started/, fn -> Headcount.subscribe() end
  end

  test "a crashed server's restart attaches to the running engine; presences survive" do
    pid = holder(["survivor"])
    settles("survivor", 1)
    server = GenServer.whereis(Headcount)
    Process.exit(server, :kill)
    assert eventually(fn -> GenServer.whereis(Headcount) == nil end)
    # Still counting, though no server runs.
    assert count_now("survivor") == 1
    # The same options again: attached, not started anew.
    {:ok, s2} = Headcount.start_link(tick: @tick)
    Process.unlink(s2)
    assert count_now("survivor") == 1
    send(pid, :stop)
    settles("survivor", 0)
    # Other options while it runs: refused.
    Process.flag(:trap_exit, true)
    GenServer.stop(s2, :kill)
    assert {:error, {:already_started, _}} = Headcount.start_link(tick: 50)
  end

  test "garbage given to the NIF itself never takes the VM down" do
    terms = [
      nil,
      1,
      -1,
      1.5,
      "",
      <<0xFF>>,
      :a,
      [],
      [1, 2],
      {1},
      %{},
      self(),
      make_ref(),
      fn -> 1 end,
      String.duplicate("y", 10_000),
      {:unicast, 1, 2, 3, 4},
      %{cluster: {:multicast, 1, 2}}
    ]

    for f <- [
          :join,
          :leave,
          :count,
          :count_local,
          :presences,
          :top,
          :transport_attach,
          :transport_gone
        ],
        t <- terms do
      try do
        apply(Headcount.Native, f, [t])
      rescue
        ArgumentError -> :ok
      end
    end

    for f <- [:join_pid, :leave_pid, :transport_deliver], a <- terms, b <- terms do
      try do
        apply(Headcount.Native, f, [a, b])
      rescue
        ArgumentError -> :ok
      end
    end

    for t <- terms do
      try do
        # Never with a valid map while one runs (that would be "already started").
        Headcount.Native.start(t, self())
      rescue
        ArgumentError -> :ok
      end
    end

    # Still alive and counting.
    :ok = Headcount.join("after-garbage")
    assert count_now("after-garbage") == 1
  end
end
