defmodule Bench.Runner do
  @moduledoc """
  The driver: for every scenario (nodes × topics) and every design, one after the other in the
  same run:

  1. memory: `:erlang.memory(:total)` (after a GC of every process) before/after 100k holders
     that do *not* join, then before/after 100k that do; bytes per presence is the difference
     of the two deltas / 100k;
  2. the 100k joins themselves (the fill): wall time, join p50/p99, time until exact;
  3. settle: churn at a fixed rate every design sustains (`--settle-rate`), stop, time until
     every node's counts are exact;
  4. ramp: churn in steps of `--step-ms` at a rising rate (×`--factor`) until a step fails,
     then one step at the geometric mean of the last pass and the first failure.

  A step passes when join p99 ≤ `--p99-ms`, the pacers issued ≥ 95 % of the ops they were due
  (else the machine, shared by the generator and the design, is saturated), and at the end of
  the step the queued work (design mailboxes + spawned holders not yet past their join) is at
  most 100 ms worth of the step's rate (min 2000). After each step the churn stops and the
  driver waits (≤ 30 s) until that queue is empty and every node's counts are exact.
  """

  alias Bench.Hist

  @designs %{
    headcount: Bench.Design.Headcount,
    jose: Bench.Design.Jose,
    ets_monitor: Bench.Design.EtsMonitor,
    noop: Bench.Design.Noop
  }

  def design_mod(name), do: Map.fetch!(@designs, name)

  @doc "Runs every scenario; `on_scenario` gets the results so far after each one."
  def run(o, on_scenario \\ fn _ -> :ok end) do
    results =
      for n <- o.nodes, topics <- o.topics, reduce: [] do
        acc ->
          nodes = Bench.Cluster.nodes(n)
          acc = acc ++ [scenario(nodes, topics, o)]
          on_scenario.(acc)
          acc
      end

    Bench.Cluster.stop_peers()
    results
  end

  defp scenario(nodes, topics, o) do
    log("== scenario: #{length(nodes)} node(s), #{topics} topics, #{o.presences} presences")

    Enum.each(nodes, fn n ->
      :ok = :erpc.call(n, Bench.Node, :scenario, [topics, o.seed, o.pacers], 60_000)
    end)

    ranks = sample_ranks(topics, o.seed)
    # warm-up: the first 100k processes on a node cost more (allocator carriers, process table)
    Enum.each(nodes, fn n ->
      :erpc.call(n, Bench.Node, :fill, [div(o.presences, length(nodes)), false], :infinity)
    end)

    Enum.each(nodes, fn n -> :erpc.call(n, Bench.Node, :stop_all, [], :infinity) end)

    rows =
      for d <- o.designs do
        mod = design_mod(d)

        if mod.available?() do
          run_design(d, mod, nodes, ranks, o)
        else
          log("-- #{mod.name()}: not available (module not loaded), skipped")
          %{design: d, name: mod.name(), skipped: true}
        end
      end

    %{nodes: length(nodes), node_names: nodes, topics: topics, rows: rows}
  end

  # top 10 ranks + 40 others spread over the tail (deterministic)
  defp sample_ranks(topics, seed) do
    :rand.seed(:exsss, {seed, topics, 7})
    top = Enum.to_list(1..min(10, topics))

    tail =
      if topics > 10, do: Enum.map(1..40, fn _ -> 10 + :rand.uniform(topics - 10) end), else: []

    Enum.uniq(top ++ tail)
  end

  defp run_design(d, mod, nodes, ranks, o) do
    log("-- #{mod.name()}")
    dopts = design_opts(nodes, o)
    tick = mod.tick_ms(dopts)
    each(nodes, :setup, [mod, dopts])
    shares = split(o.presences, length(nodes))

    try do
      # 1. memory
      {m0, e0} = mem(nodes)
      each_arg(nodes, shares, fn s -> [s, false] end, :fill)
      {m1, e1} = mem(nodes)
      each(nodes, :stop_all, [])
      {m2, e2} = mem(nodes)

      # 2. the fill: 100k joins as fast as the pacers spawn them
      t0 = now_ms()
      each_arg(nodes, shares, fn s -> [s, true] end, :fill)
      fill_ms = now_ms() - t0
      fill_settle = settle(nodes, mod, ranks, t0 + fill_ms)
      fill_hist = Hist.merge(each(nodes, :hist, [:fill]))
      {m3, e3} = mem(nodes)
      bytes = (m3 - m2 - (m1 - m0)) / o.presences
      ets_bytes = (e3 - e2 - (e1 - e0)) / o.presences

      log(
        "   memory: no-join Δ #{m1 - m0} B, join Δ #{m3 - m2} B → #{Float.round(bytes, 1)} B/presence " <>
          "(of which ETS #{Float.round(ets_bytes, 1)}); " <>
          "fill #{fill_ms} ms, p50 #{fmt_ns(Hist.percentile(fill_hist, 50))} p99 #{fmt_ns(Hist.percentile(fill_hist, 99))}, " <>
          "exact +#{inspect(fill_settle.exact_ms)} ms"
      )

      # 3. settle
      settle_step = step(nodes, mod, ranks, o.settle_rate, o)

      # 4. ramp
      th0 = each(nodes, :threads_cpu, [])
      {steps, max_pass} = ramp(nodes, mod, ranks, o)
      th1 = each(nodes, :threads_cpu, [])
      log("   CPU seconds by thread over the ramp: #{threads_delta(th0, th1)}")
      log("   diagnostics with #{o.presences} held: #{inspect(each(nodes, :diagnostics, []))}")

      # 5. every holder exits at once (like a node's users all disconnecting)
      t_exit = now_ms()
      each(nodes, :stop_all, [])
      mass_exit_ms = now_ms() - t_exit
      mass_exit = settle(nodes, mod, ranks, now_ms())

      log(
        "   all #{o.presences} exited in #{mass_exit_ms} ms; exact (all 0) +#{inspect(mass_exit.exact_ms)} ms after the last exit"
      )

      log("   diagnostics with 0 held: #{inspect(each(nodes, :diagnostics, []))}")

      %{
        design: d,
        name: mod.name(),
        tick_ms: tick,
        bytes_per_presence: bytes,
        ets_bytes_per_presence: ets_bytes,
        mem: %{m0: m0, m1: m1, m2: m2, m3: m3},
        fill_ms: fill_ms,
        fill_p50: Hist.percentile(fill_hist, 50),
        fill_p99: Hist.percentile(fill_hist, 99),
        fill_exact_ms: fill_settle.exact_ms,
        settle: settle_step,
        steps: steps,
        max: max_pass,
        first_fail: Enum.find(steps, &(not &1.pass and not Map.get(&1, :disturbed, false))),
        mass_exit_ms: mass_exit_ms,
        mass_exit_exact_ms: mass_exit.exact_ms
      }
    after
      each(nodes, :stop_all, [])
      each(nodes, :teardown, [])
    end
  end

  # per node: thread name => CPU seconds, the busiest first (threads that used < 0.05 s left out)
  defp threads_delta(th0, th1) do
    Enum.zip(th0, th1)
    |> Enum.map(fn {a, b} ->
      b
      |> Enum.map(fn {name, t} -> {name, (t - Map.get(a, name, 0)) / 100} end)
      |> Enum.filter(fn {_, sec} -> sec >= 0.05 end)
      |> Enum.sort_by(fn {_, sec} -> -sec end)
      |> Enum.map_join(", ", fn {name, sec} -> "#{name} #{fmt_f(sec)}" end)
    end)
    |> Enum.map_join(" | ", &"[#{&1}]")
  end

  defp design_opts(nodes, o),
    do: [nodes: length(nodes), cluster: o.cluster, jose_tick: o.jose_tick, hc_tick: o.hc_tick]

  defp ramp(nodes, mod, ranks, o) do
    {steps, last_pass, first_fail} = ramp_up(nodes, mod, ranks, o, o.start_rate, [], nil)

    steps =
      if last_pass && first_fail && first_fail.drained_ms != :timeout do
        mid = round(:math.sqrt(last_pass.rate * first_fail.rate))
        steps ++ step_retry(nodes, mod, ranks, mid, o)
      else
        steps
      end

    max_pass = steps |> Enum.filter(& &1.pass) |> Enum.max_by(& &1.rate, fn -> nil end)
    {steps, max_pass}
  end

  # A failed step during which the rest of the machine took more than 0.25 core (a neighbour's
  # compile) is run again, once; both are listed.
  defp step_retry(nodes, mod, ranks, rate, o) do
    s = step(nodes, mod, ranks, rate, o)

    if not s.pass and s.other_cpu_s / s.wall_s > 0.25 do
      log(
        "   (disturbed: other load #{fmt_f(s.other_cpu_s / s.wall_s)} cores; running the step again)"
      )

      [Map.put(s, :disturbed, true), step(nodes, mod, ranks, rate, o)]
    else
      [s]
    end
  end

  defp ramp_up(nodes, mod, ranks, o, rate, acc, last_pass) do
    ss = step_retry(nodes, mod, ranks, rate, o)
    s = List.last(ss)
    acc = acc ++ ss

    cond do
      not s.pass -> {acc, last_pass, s}
      rate * o.factor > o.max_rate -> {acc, s, nil}
      true -> ramp_up(nodes, mod, ranks, o, round(rate * o.factor), acc, s)
    end
  end

  @doc "One churn step at `rate` joins+exits per second (whole cluster)."
  def step(nodes, mod, ranks, rate, o) do
    cpu0 = cpu(nodes)
    each_arg(nodes, split(rate, length(nodes)), &[&1], :churn)
    t0 = now_ms()
    {max_q, max_rq} = watch(nodes, t0 + o.step_ms, 0, 0)
    end_status = each(nodes, :status, [])
    stops = each(nodes, :stop_churn, [])
    t_stop = now_ms()
    cpu1 = cpu(nodes)
    {own_s, other_s} = cpu_delta(cpu0, cpu1)
    end_q = Enum.sum(Enum.map(end_status, &(&1.backlog + &1.pending)))
    s = settle(nodes, mod, ranks, t_stop)
    hist = Hist.merge(each(nodes, :hist, [:step]))
    done = Enum.sum(Enum.map(stops, & &1.done))
    due = Enum.sum(Enum.map(stops, & &1.due))
    elapsed_s = Enum.max(Enum.map(stops, & &1.elapsed_ns)) / 1.0e9
    achieved = round(done * 2 / elapsed_s)
    p50 = Hist.percentile(hist, 50)
    p99 = Hist.percentile(hist, 99)
    limit = max(2000, div(rate, 10))
    # exact on every node within 2 ticks + 100 ms of the step's end (100 ms without a tick):
    # catches work queued where backlog/0 cannot see it
    settle_limit = 2 * (mod.tick_ms(design_opts(nodes, o)) || 0) + 100

    reasons =
      Enum.reject(
        [
          p99 && p99 > o.p99_ms * 1_000_000 && "p99 #{fmt_ns(p99)}",
          done < 0.95 * due &&
            "generator behind (#{round(100 * done / max(due, 1))} % of ops issued)",
          end_q > limit && "queue #{end_q} at end of step (limit #{limit})",
          s.drained_ms == :timeout && "did not drain in 30 s",
          s.exact_ms == :timeout && "not exact in 30 s",
          is_integer(s.exact_ms) && s.exact_ms > settle_limit &&
            "exact only after #{s.exact_ms} ms (limit #{settle_limit})"
        ],
        &(&1 in [nil, false])
      )

    r = %{
      rate: rate,
      achieved: achieved,
      joins: Hist.count(hist),
      p50: p50,
      p99: p99,
      max_lat: Hist.max_value(hist),
      end_queue: end_q,
      max_queue: max_q,
      max_run_queue: max_rq,
      cpu_s: own_s,
      other_cpu_s: other_s,
      wall_s: (t_stop - t0) / 1000,
      cpu_us_per_op: if(done > 0, do: own_s * 1.0e6 / (done * 2)),
      drained_ms: s.drained_ms,
      exact_ms: s.exact_ms,
      pass: reasons == [],
      reasons: reasons
    }

    log(
      "   step #{fmt_rate(rate)}/s: achieved #{fmt_rate(achieved)}/s, joins #{r.joins}, p50 #{fmt_ns(p50)} p99 #{fmt_ns(p99)} " <>
        "max #{fmt_ns(r.max_lat)}, CPU #{fmt_f(r.cpu_us_per_op)} µs/op (other load #{fmt_f(other_s / r.wall_s)} cores), queue end #{end_q} max #{max_q}, run queue max #{max_rq}, drained +#{inspect(s.drained_ms)} ms, " <>
        "exact +#{inspect(s.exact_ms)} ms → #{if r.pass, do: "pass", else: "FAIL: " <> Enum.join(reasons, "; ")}"
    )

    r
  end

  defp watch(nodes, until, max_q, max_rq) do
    if now_ms() >= until do
      {max_q, max_rq}
    else
      Process.sleep(min(100, max(until - now_ms(), 0)))
      st = each(nodes, :status, [])
      q = Enum.sum(Enum.map(st, &(&1.backlog + &1.pending)))
      rq = Enum.sum(Enum.map(st, & &1.run_queue))
      watch(nodes, until, max(max_q, q), max(max_rq, rq))
    end
  end

  # Poll (every 5 ms) until the work is drained and every node's counts (sampled topics +
  # total) equal the ground truth summed over the nodes. Times are from `t_stop`.
  defp settle(nodes, mod, ranks, t_stop) do
    truth = each(nodes, :truth, [ranks]) |> sum_truth()
    exactable = mod.total() != :unsupported
    poll(nodes, ranks, truth, t_stop, exactable, nil, if(exactable, do: nil, else: :na))
  end

  defp poll(nodes, ranks, truth, t_stop, exactable, drained, exact) do
    elapsed = now_ms() - t_stop

    cond do
      drained != nil and exact != nil ->
        %{drained_ms: drained, exact_ms: exact}

      elapsed > 30_000 ->
        %{drained_ms: drained || :timeout, exact_ms: exact || :timeout}

      true ->
        drained =
          drained ||
            if(Enum.all?(each(nodes, :status, []), &(&1.backlog == 0 and &1.pending == 0)),
              do: elapsed
            )

        exact =
          exact ||
            if(exactable and Enum.all?(each(nodes, :snapshot, [ranks]), &(&1 == truth)), do: elapsed)

        if drained == nil or exact == nil, do: Process.sleep(5)
        poll(nodes, ranks, truth, t_stop, exactable, drained, exact)
    end
  end

  defp sum_truth(list) do
    Enum.reduce(list, fn {c, t}, {ac, at} -> {Enum.zip_with(c, ac, &+/2), t + at} end)
  end

  # --- rpc helpers: the same call on every node, in parallel ---

  defp each(nodes, fun, args) do
    nodes
    |> Enum.map(fn n -> Task.async(fn -> :erpc.call(n, Bench.Node, fun, args, :infinity) end) end)
    |> Enum.map(&Task.await(&1, :infinity))
  end

  defp each_arg(nodes, vals, argf, fun) do
    Enum.zip(nodes, vals)
    |> Enum.map(fn {n, v} ->
      Task.async(fn -> :erpc.call(n, Bench.Node, fun, argf.(v), :infinity) end)
    end)
    |> Enum.map(&Task.await(&1, :infinity))
  end

  defp mem(nodes) do
    ms = each(nodes, :memory, [])
    if System.get_env("BENCH_MEM_DEBUG"), do: log("   mem #{inspect(ms)}")
    ms |> Enum.reduce({0, 0}, fn m, {at, ae} -> {at + m.total, ae + m.ets} end)
  end

  defp split(n, k), do: for(i <- 0..(k - 1), do: div(n, k) + if(i < rem(n, k), do: 1, else: 0))
  # {ticks of our nodes' OS processes, busy ticks of the whole machine}
  defp cpu(nodes) do
    ours = Enum.sum(each(nodes, :cpu_ticks, []))

    [_cpu | f] =
      File.read!("/proc/stat") |> String.split("\n") |> hd() |> String.split(" ", trim: true)

    [user, nice, system, _idle, _iowait, irq, softirq, steal | _] =
      Enum.map(f, &String.to_integer/1)

    {ours, user + nice + system + irq + softirq + steal}
  end

  # seconds of CPU: {our nodes, everything else on the machine}
  defp cpu_delta({o0, b0}, {o1, b1}) do
    hz = 100
    {(o1 - o0) / hz, max(b1 - b0 - (o1 - o0), 0) / hz}
  end

  def fmt_f(nil), do: "—"
  def fmt_f(x), do: :erlang.float_to_binary(x / 1, decimals: 2)

  defp now_ms, do: System.monotonic_time(:millisecond)
  def log(s), do: IO.puts(:stderr, s)

  def fmt_ns(nil), do: "—"
  def fmt_ns(ns) when ns < 1_000, do: "#{ns} ns"
  def fmt_ns(ns) when ns < 1_000_000, do: "#{Float.round(ns / 1_000, 1)} µs"
  def fmt_ns(ns), do: "#{Float.round(ns / 1_000_000, 2)} ms"

  def fmt_rate(r) when r >= 1_000_000, do: "#{Float.round(r / 1_000_000, 2)}M"
  def fmt_rate(r) when r >= 1_000, do: "#{round(r / 1_000)}k"
  def fmt_rate(r), do: "#{r}"
end
