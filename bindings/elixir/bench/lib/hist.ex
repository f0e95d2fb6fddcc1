defmodule Bench.Hist do
  @moduledoc """
  Log-linear latency histogram on a `:counters` array (lock-free, written by every joining
  process). Values are nanoseconds; 32 sub-buckets per power of two (≤ 3.2 % error).
  """
  import Bitwise

  @sub 32
  @buckets 1024

  def new, do: :counters.new(@buckets, [:write_concurrency])

  def record(ref, ns), do: :counters.add(ref, bucket(ns) + 1, 1)

  def bucket(v) when v < @sub, do: max(v, 0)

  def bucket(v) do
    k = fix_k(v, trunc(:math.log2(v)) - 5)
    min(@sub + k * @sub + ((v >>> k) - @sub), @buckets - 1)
  end

  defp fix_k(v, k) do
    m = v >>> k

    cond do
      m >= 2 * @sub -> fix_k(v, k + 1)
      m < @sub -> fix_k(v, k - 1)
      true -> k
    end
  end

  @doc "Lower bound and width of a bucket, in ns."
  def bounds(b) when b < @sub, do: {b, 1}

  def bounds(b) do
    k = div(b - @sub, @sub)
    m = rem(b - @sub, @sub) + @sub
    {m <<< k, 1 <<< k}
  end

  def to_list(ref), do: for(i <- 1..@buckets, do: :counters.get(ref, i))

  def merge([]), do: List.duplicate(0, @buckets)
  def merge([h | t]), do: Enum.reduce(t, h, fn l, acc -> Enum.zip_with(l, acc, &+/2) end)

  def count(list), do: Enum.sum(list)

  @doc "Percentile (0..100) of a bucket list, in ns (bucket midpoint); nil when empty."
  def percentile(list, p) do
    total = Enum.sum(list)

    if total == 0 do
      nil
    else
      target = max(1, ceil(total * p / 100))

      {b, _} =
        list
        |> Enum.with_index()
        |> Enum.reduce_while(0, fn {c, i}, acc ->
          if acc + c >= target, do: {:halt, {i, acc + c}}, else: {:cont, acc + c}
        end)

      {lo, w} = bounds(b)
      lo + div(w - 1, 2)
    end
  end

  def max_value(list) do
    case list |> Enum.with_index() |> Enum.filter(fn {c, _} -> c > 0 end) |> List.last() do
      nil -> nil
      {_, b} -> elem(bounds(b), 0) + elem(bounds(b), 1) - 1
    end
  end
end
