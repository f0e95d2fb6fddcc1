defmodule Bench.Pacer do
  @moduledoc """
  Load generator: spawns holders (each joins a Zipf-chosen topic) and stops the oldest ones,
  keeping them in a FIFO. In churn mode it keeps a fixed rate of *pairs* per second (one new
  holder joins and the oldest holder exits), catching up every millisecond, in batches of at most
  200 pairs so it still reads its mailbox. It also keeps the ground truth (`:counters` per topic,
  last slot = total) of the holders it has alive.
  """

  @batch 200
  @sec 1_000_000_000

  def start_link(index, seed) do
    spawn_link(fn ->
      :rand.seed(:exsss, {seed, index, :erlang.phash2(node())})
      loop(%{q: :queue.new(), rate: 0, t0: 0, done: 0, hist: nil, mod: nil})
    end)
  end

  def call(pid, msg, timeout \\ :infinity) do
    ref = make_ref()
    send(pid, {msg, self(), ref})

    receive do
      {^ref, reply} -> reply
    after
      timeout -> exit({:pacer_timeout, msg})
    end
  end

  defp loop(%{rate: 0} = st) do
    receive do
      msg -> handle(msg, st)
    end
  end

  defp loop(st) do
    receive do
      msg -> handle(msg, st)
    after
      0 ->
        due = div((:erlang.monotonic_time() - st.t0) * st.rate, @sec)
        behind = due - st.done

        if behind > 0 do
          loop(pairs(st, min(behind, @batch)))
        else
          receive do
            msg -> handle(msg, st)
          after
            1 -> loop(st)
          end
        end
    end
  end

  defp handle({{:fill, n, join?, mod, hist}, from, ref}, st) do
    %{ctr: ctr} = conf()
    q = Enum.reduce(1..n//1, st.q, fn _, q -> :queue.in(spawn_holder(mod, hist, ctr, join?), q) end)
    send(from, {ref, :ok})
    loop(%{st | q: q, mod: mod, hist: hist})
  end

  defp handle({{:churn, rate, hist}, from, ref}, st) do
    send(from, {ref, :ok})
    loop(%{st | rate: rate, hist: hist, t0: :erlang.monotonic_time(), done: 0})
  end

  defp handle({:stop_churn, from, ref}, st) do
    elapsed = :erlang.monotonic_time() - st.t0
    due = if st.rate > 0, do: div(elapsed * st.rate, @sec), else: 0
    send(from, {ref, %{done: st.done, due: due, elapsed_ns: elapsed}})
    loop(%{st | rate: 0})
  end

  defp handle({:stop_all, from, ref}, st) do
    %{truth: truth, total_slot: ts} = conf()

    pids =
      for {pid, t} <- :queue.to_list(st.q) do
        if t > 0 do
          :counters.sub(truth, t, 1)
          :counters.sub(truth, ts, 1)
        end

        send(pid, :stop)
        pid
      end

    wait_dead(pids)
    send(from, {ref, :ok})
    loop(%{st | q: :queue.new(), rate: 0})
  end

  defp handle({:len, from, ref}, st) do
    send(from, {ref, :queue.len(st.q)})
    loop(st)
  end

  defp wait_dead([]), do: :ok

  defp wait_dead(pids) do
    case Enum.filter(pids, &Process.alive?/1) do
      [] ->
        :ok

      alive ->
        Process.sleep(2)
        wait_dead(alive)
    end
  end

  defp pairs(st, 0), do: st

  defp pairs(st, n) do
    %{ctr: ctr} = conf()
    q = :queue.in(spawn_holder(st.mod, st.hist, ctr, true), st.q)

    q =
      case :queue.out(q) do
        {{:value, {pid, t}}, q} ->
          if t > 0 do
            %{truth: truth, total_slot: ts} = conf()
            :counters.sub(truth, t, 1)
            :counters.sub(truth, ts, 1)
          end

          send(pid, :stop)
          q
      end

    pairs(%{st | q: q, done: st.done + 1}, n - 1)
  end

  defp spawn_holder(mod, hist, ctr, join?) do
    %{topics: topics, cdf: cdf, truth: truth, total_slot: ts} = conf()
    t = Bench.Zipf.sample(cdf, :rand.uniform())
    :counters.add(ctr, 1, 1)
    pid = spawn(Bench.Holder, :run, [mod, elem(topics, t - 1), hist, ctr, join?])

    if join? do
      :counters.add(truth, t, 1)
      :counters.add(truth, ts, 1)
      {pid, t}
    else
      {pid, 0}
    end
  end

  defp conf, do: :persistent_term.get(Bench.Node)
end
