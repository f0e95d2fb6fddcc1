defmodule Bench.Zipf do
  @moduledoc "Zipf(s) over topic ranks 1..n: rank 1 is the most popular topic."

  def cdf(n, s \\ 1.0) do
    weights = for i <- 1..n, do: 1.0 / :math.pow(i, s)
    total = Enum.sum(weights)

    weights
    |> Enum.scan(&+/2)
    |> Enum.map(&(&1 / total))
    |> List.to_tuple()
  end

  @doc "Smallest 1-based rank i with cdf[i] >= u."
  def sample(cdf, u), do: search(cdf, u, 0, tuple_size(cdf) - 1) + 1

  defp search(_cdf, _u, lo, hi) when lo >= hi, do: lo

  defp search(cdf, u, lo, hi) do
    mid = div(lo + hi, 2)
    if elem(cdf, mid) >= u, do: search(cdf, u, lo, mid), else: search(cdf, u, mid + 1, hi)
  end

  def topics(n), do: List.to_tuple(for i <- 1..n, do: "room:#{i}")
end
