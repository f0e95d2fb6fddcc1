defmodule Headcount.Options do
  @moduledoc """
  The options of `Headcount.start_link/1`, checked and turned into what the NIF takes.

  They mirror the Rust builder's, with the same defaults (see `Headcount` for the list). Every
  unknown option or bad value raises `ArgumentError` naming it.
  """

  @top [
    :shards,
    :tick,
    :dead_after,
    :cluster,
    :cluster_name,
    :key_file,
    :key,
    :insecure,
    :node_name,
    :max_topics,
    :max_subscriber_queue,
    :parity,
    :relay_fanout
  ]
  @cluster [:multicast, :interface, :unicast, :peers, :peers_dns, :dns_interval]

  @doc "Checks `opts`; returns `{native_map, elixir_settings}` or raises `ArgumentError`."
  @spec parse(keyword()) :: {map(), map()}
  def parse(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "Headcount options must be a keyword list, got: #{inspect(opts)}"
    end

    for {k, _} <- opts, k not in @top do
      raise ArgumentError,
            "unknown Headcount option #{inspect(k)} (known: #{Enum.map_join(@top, ", ", &inspect/1)})"
    end

    cluster = cluster(Keyword.get(opts, :cluster))
    erlang? = cluster == :erlang

    native = %{
      shards: pos_int(opts, :shards) || :erlang.system_info(:schedulers),
      tick: pos_int(opts, :tick),
      dead_after: pos_int(opts, :dead_after),
      max_topics: pos_int(opts, :max_topics),
      cluster_name: string(opts, :cluster_name),
      key_file: string(opts, :key_file),
      key: key(opts, erlang?),
      insecure: bool(opts, :insecure),
      parity: bool(opts, :parity),
      relay_fanout: non_neg_int(opts, :relay_fanout),
      node_name:
        string(opts, :node_name) ||
          if(erlang? and node() != :nonode@nohost, do: Atom.to_string(node())),
      cluster: cluster
    }

    if native.key && native.key_file do
      raise ArgumentError, "Headcount options :key and :key_file exclude each other"
    end

    settings = %{max_subscriber_queue: pos_int(opts, :max_subscriber_queue) || 1000}
    {native, settings}
  end

  # Over Erlang distribution the nodes already share a secret, the cookie: without a key of
  # its own the cluster's key is derived from it.
  defp key(opts, erlang?) do
    case check(opts, :key, &(is_binary(&1) and byte_size(&1) > 0), "a non-empty binary") do
      nil when erlang? ->
        if Keyword.has_key?(opts, :key_file) or node() == :nonode@nohost,
          do: nil,
          else: "headcount/erlang-cookie/" <> Atom.to_string(:erlang.get_cookie())

      k ->
        k
    end
  end

  defp pos_int(opts, k), do: check(opts, k, &(is_integer(&1) and &1 > 0), "a positive integer")

  defp string(opts, k),
    do: check(opts, k, &(is_binary(&1) and byte_size(&1) > 0), "a non-empty string")

  defp bool(opts, k), do: check(opts, k, &is_boolean/1, "a boolean")

  defp non_neg_int(opts, k),
    do: check(opts, k, &(is_integer(&1) and &1 >= 0), "a non-negative integer")

  # The value of option `k` (nil when absent), or an ArgumentError naming it.
  defp check(opts, k, valid?, what) do
    case Keyword.get(opts, k) do
      nil ->
        nil

      v ->
        if valid?.(v) do
          v
        else
          raise ArgumentError, "Headcount option #{inspect(k)} must be #{what}, got: #{inspect(v)}"
        end
    end
  end

  defp cluster(nil), do: nil
  defp cluster(:erlang), do: :erlang

  defp cluster(kw) when is_list(kw) and kw != [] do
    unless Keyword.keyword?(kw) do
      raise ArgumentError,
            "Headcount option :cluster must be :erlang or a keyword list, got: #{inspect(kw)}"
    end

    for {k, _} <- kw, k not in @cluster do
      raise ArgumentError,
            "unknown :cluster option #{inspect(k)} (known: #{Enum.map_join(@cluster, ", ", &inspect/1)})"
    end

    multicast = Keyword.get(kw, :multicast)
    unicast? = Enum.any?([:unicast, :peers, :peers_dns], &Keyword.has_key?(kw, &1))

    cond do
      multicast && unicast? ->
        raise ArgumentError, ":cluster option :multicast excludes :unicast, :peers and :peers_dns"

      multicast ->
        if Keyword.has_key?(kw, :dns_interval),
          do: raise(ArgumentError, ":cluster option :dns_interval needs :peers_dns")

        group = addr(multicast, :multicast)
        interface = ip(Keyword.get(kw, :interface), :interface)

        for {k, v} <- [multicast: group, interface: interface || ""],
            String.contains?(v, "[") or String.contains?(v, "::") do
          raise ArgumentError, ":cluster option #{inspect(k)} takes an IPv4 address, got: #{v}"
        end

        {:multicast, group, interface}

      unicast? ->
        if Keyword.has_key?(kw, :interface),
          do: raise(ArgumentError, ":cluster option :interface is for :multicast")

        peers = list(Keyword.get(kw, :peers, []), :peers) |> Enum.map(&addr(&1, :peers))
        dns = list(Keyword.get(kw, :peers_dns, []), :peers_dns) |> Enum.map(&dns_name/1)
        interval = Keyword.get(kw, :dns_interval)

        unless is_nil(interval) or (is_integer(interval) and interval > 0) do
          raise ArgumentError,
                ":cluster option :dns_interval must be a positive integer (milliseconds), got: #{inspect(interval)}"
        end

        bind =
          case Keyword.get(kw, :unicast) do
            nil -> nil
            port when is_integer(port) -> addr({{0, 0, 0, 0}, port}, :unicast)
            a -> addr(a, :unicast)
          end

        {:unicast, bind, peers, dns, interval}

      true ->
        raise ArgumentError,
              ":cluster needs :multicast, or :unicast / :peers / :peers_dns, got: #{inspect(kw)}"
    end
  end

  defp cluster(other),
    do:
      raise(
        ArgumentError,
        "Headcount option :cluster must be :erlang or a keyword list, got: #{inspect(other)}"
      )

  defp list(l, _k) when is_list(l), do: l
  defp list(s, _k) when is_binary(s), do: [s]

  defp list(other, k),
    do: raise(ArgumentError, ":cluster option #{inspect(k)} must be a list, got: #{inspect(other)}")

  defp dns_name(s) when is_binary(s) do
    case String.split(s, ":") |> Enum.reverse() do
      [port, _ | _] ->
        case Integer.parse(port) do
          {p, ""} when p in 1..65_535 ->
            s

          _ ->
            raise ArgumentError,
                  ":cluster option :peers_dns wants \"name:port\", got: #{inspect(s)}"
        end

      _ ->
        raise ArgumentError, ":cluster option :peers_dns wants \"name:port\", got: #{inspect(s)}"
    end
  end

  defp dns_name(other),
    do:
      raise(
        ArgumentError,
        ":cluster option :peers_dns wants \"name:port\" strings, got: #{inspect(other)}"
      )

  # An address with a port, as text the NIF parses ("1.2.3.4:5", "[::1]:5").
  defp addr({ip, port}, k) when is_integer(port) and port in 0..65_535 do
    case ip(ip, k) do
      nil -> raise ArgumentError, ":cluster option #{inspect(k)} needs an IP address, got: nil"
      text -> if String.contains?(text, ":"), do: "[#{text}]:#{port}", else: "#{text}:#{port}"
    end
  end

  defp addr(s, k) when is_binary(s) do
    with [host, port] <- split_port(s),
         {p, ""} when p in 0..65_535 <- Integer.parse(port),
         {:ok, ip} <- :inet.parse_strict_address(String.to_charlist(host)) do
      addr({ip, p}, k)
    else
      _ ->
        raise ArgumentError,
              ":cluster option #{inspect(k)} wants {ip, port} or \"ip:port\", got: #{inspect(s)}"
    end
  end

  defp addr(other, k),
    do:
      raise(
        ArgumentError,
        ":cluster option #{inspect(k)} wants {ip, port} or \"ip:port\", got: #{inspect(other)}"
      )

  defp split_port("[" <> rest) do
    case String.split(rest, "]:") do
      [h, p] -> [h, p]
      _ -> :error
    end
  end

  defp split_port(s) do
    case String.split(s, ":") do
      [h, p] -> [h, p]
      _ -> :error
    end
  end

  defp ip(nil, _k), do: nil

  defp ip(ip, k) when is_tuple(ip) do
    case :inet.ntoa(ip) do
      {:error, _} ->
        raise ArgumentError, ":cluster option #{inspect(k)}: #{inspect(ip)} is not an IP address"

      text ->
        List.to_string(text)
    end
  end

  defp ip(s, k) when is_binary(s) do
    case :inet.parse_strict_address(String.to_charlist(s)) do
      {:ok, ip} -> ip(ip, k)
      _ -> raise ArgumentError, ":cluster option #{inspect(k)}: #{inspect(s)} is not an IP address"
    end
  end

  defp ip(other, k),
    do:
      raise(ArgumentError, ":cluster option #{inspect(k)}: #{inspect(other)} is not an IP address")
end
