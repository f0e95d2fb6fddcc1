defmodule Bench.Report do
  @moduledoc "Markdown tables: one per scenario, the designs side by side."
  import Bench.Runner, only: [fmt_ns: 1, fmt_rate: 1]

  def markdown(results, o) do
    Enum.map_join(results, "\n", &scenario(&1, o))
  end

  defp scenario(%{nodes: n, topics: t, rows: rows}, o) do
    rows = Enum.reject(rows, &Map.get(&1, :skipped))
    jose = Enum.find(rows, &(&1.design == :jose))
    noop = Enum.find(rows, &(&1.design == :noop))

    # the highest ramp rate every design passed: CPU per op is compared there
    common =
      rows
      |> Enum.map(fn r ->
        r.steps |> Enum.filter(& &1.pass) |> Enum.map(& &1.rate) |> MapSet.new()
      end)
      |> Enum.reduce(&MapSet.intersection/2)
      |> Enum.max(fn -> nil end)

    at = fn r -> Enum.find(r.steps, &(&1.pass and &1.rate == common)) end

    head =
      "| #{n} node#{if n > 1, do: "s", else: ""}, #{fmt_int(t)} topics | " <>
        Enum.map_join(rows, " | ", & &1.name) <> " |\n"

    sep = "|---|" <> Enum.map_join(rows, "|", fn _ -> "---:" end) <> "|\n"

    lines = [
      {"max sustained churn (joins+exits/s, p99 ≤ #{o.p99_ms} ms, keeps up)", &max_rate/1},
      {"× José's design", fn r -> ratio(r, jose) end},
      {"first failing step", &first_fail/1},
      {"join p50 / p99 at the max sustained step", fn r -> lat(r.max) end},
      {"join p50 / p99 at #{fmt_rate(o.settle_rate)}/s (all designs)", fn r -> lat(r.settle) end},
      {"exact on every node after #{fmt_rate(o.settle_rate)}/s churn stops",
       fn r -> exact(r, r.settle) end},
      {"exact on every node after the max sustained step stops", fn r -> exact(r, r.max) end},
      {"CPU per join or exit at #{if common, do: fmt_rate(common), else: "—"}/s (µs; the node processes, NIF threads included)",
       fn r -> cpu(at.(r)) end},
      {"… above the no-op (the design's own CPU per op)",
       fn r -> cpu_above(at.(r), noop && at.(noop)) end},
      {"… × José's design (own CPU per op; lower is better)",
       fn r -> cpu_ratio(at.(r), jose && at.(jose), noop && at.(noop)) end},
      {"other load on the machine during the ramp (cores, mean)", &other_load/1},
      {"memory per presence (`:erlang.memory(:total)` Δ, bytes; of which ETS)", &mem/1},
      {"#{fmt_int(o.presences)} joins (fill): wall time; join p50 / p99", &fill/1},
      {"exact after the fill's last join", &exact_fill/1},
      {"all #{fmt_int(o.presences)} exit at once: time for the exits; then exact (all 0)",
       fn r -> "#{r.mass_exit_ms} ms; " <> with_ticks(r.mass_exit_exact_ms, r.tick_ms) end}
    ]

    body =
      Enum.map_join(lines, "", fn {label, f} ->
        "| #{label} | " <> Enum.map_join(rows, " | ", f) <> " |\n"
      end)

    steps =
      Enum.map_join(rows, "", fn r ->
        "\n**#{r.name}** steps (target → achieved joins+exits/s: join p50 / p99, queued at end / max, drained, exact, CPU per op, other load):\n" <>
          Enum.map_join(r.steps, "", fn s ->
            "- #{fmt_rate(s.rate)} → #{fmt_rate(s.achieved)}: #{fmt_ns(s.p50)} / #{fmt_ns(s.p99)}, " <>
              "#{s.end_queue} / #{s.max_queue}, #{ms(s.drained_ms)}, #{ms(s.exact_ms)}, " <>
              "CPU #{Bench.Runner.fmt_f(s.cpu_us_per_op)} µs/op, other load #{Bench.Runner.fmt_f(s.other_cpu_s / s.wall_s)} cores — " <>
              if(s.pass, do: "pass", else: "**fail**: " <> Enum.join(s.reasons, "; ")) <>
              if(Map.get(s, :disturbed), do: " (disturbed: run again)", else: "") <> "\n"
          end)
      end)

    "### #{n} node#{if n > 1, do: "s", else: ""}, #{fmt_int(t)} topics\n\n" <>
      head <> sep <> body <> steps
  end

  defp max_rate(%{max: nil, steps: [s | _]}), do: "< #{fmt_rate(s.rate)}"
  defp max_rate(%{max: m}), do: "**#{fmt_rate(m.achieved)}**"

  defp ratio(_r, nil), do: "—"
  defp ratio(%{max: nil}, _), do: "—"
  defp ratio(_, %{max: nil}), do: "—"
  defp ratio(r, j), do: "#{Float.round(r.max.achieved / j.max.achieved, 2)}×"

  defp first_fail(%{first_fail: nil}), do: "none up to the max rate"
  defp first_fail(%{first_fail: f}), do: "#{fmt_rate(f.rate)}/s: " <> Enum.join(f.reasons, "; ")

  defp lat(nil), do: "—"
  defp lat(s), do: "#{fmt_ns(s.p50)} / #{fmt_ns(s.p99)}"

  defp exact(_r, nil), do: "—"
  defp exact(%{tick_ms: tick}, s), do: with_ticks(s.exact_ms, tick)

  defp exact_fill(r), do: with_ticks(r.fill_exact_ms, r.tick_ms)

  defp with_ticks(:na, _), do: "n/a"
  defp with_ticks(:timeout, _), do: "> 30 s"
  defp with_ticks(ms, nil), do: "#{ms} ms"
  defp with_ticks(ms, tick), do: "#{ms} ms (#{Float.round(ms / tick, 2)} ticks of #{tick} ms)"

  defp cpu(nil), do: "—"
  defp cpu(s), do: Bench.Runner.fmt_f(s.cpu_us_per_op)

  defp cpu_above(nil, _), do: "—"
  defp cpu_above(_, nil), do: "—"
  defp cpu_above(s, n), do: Bench.Runner.fmt_f(s.cpu_us_per_op - n.cpu_us_per_op)

  defp cpu_ratio(s, j, n) when s == nil or j == nil or n == nil, do: "—"

  defp cpu_ratio(s, j, n) do
    own = s.cpu_us_per_op - n.cpu_us_per_op
    jown = j.cpu_us_per_op - n.cpu_us_per_op
    if jown > 0, do: "#{Float.round(own / jown, 2)}×", else: "—"
  end

  defp other_load(r) do
    wall = Enum.sum(Enum.map(r.steps, & &1.wall_s))
    other = Enum.sum(Enum.map(r.steps, & &1.other_cpu_s))
    if wall > 0, do: Bench.Runner.fmt_f(other / wall), else: "—"
  end

  defp mem(r), do: "#{round(r.bytes_per_presence)} (ETS: #{round(r.ets_bytes_per_presence)})"
  defp fill(r), do: "#{r.fill_ms} ms; #{fmt_ns(r.fill_p50)} / #{fmt_ns(r.fill_p99)}"

  defp ms(:timeout), do: "> 30 s"
  defp ms(:na), do: "n/a"
  defp ms(x), do: "#{x} ms"

  defp fmt_int(n), do: n |> Integer.to_string() |> String.replace(~r/\B(?=(\d{3})+$)/, ",")
end
