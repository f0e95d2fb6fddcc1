defmodule Headcount.ServeTest do
  # A BEAM node and a `headcount serve` node in one UDP multicast cluster (same name, same
  # key): each counts the other's users.
  use ExUnit.Case, async: false
  import Headcount.TestHelpers

  @moduletag :serve

  defp free_port(:tcp) do
    {:ok, s} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, p} = :inet.port(s)
    :gen_tcp.close(s)
    p
  end

  defp free_port(:udp) do
    {:ok, s} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    {:ok, p} = :inet.port(s)
    :gen_udp.close(s)
    p
  end

  # One RESP command, one integer reply.
  defp resp(sock, args) do
    cmd = ["*#{length(args)}\r\n" | Enum.map(args, &"$#{byte_size(&1)}\r\n#{&1}\r\n")]
    :ok = :gen_tcp.send(sock, cmd)
    {:ok, line} = :gen_tcp.recv(sock, 0, 5_000)
    ":" <> n = String.trim_trailing(line)
    String.to_integer(n)
  end

  setup do
    dir = Path.join(System.tmp_dir!(), "headcount-serve-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    key = Path.join(dir, "key")
    File.write!(key, :crypto.strong_rand_bytes(32) |> Base.encode16())
    listen = free_port(:tcp)
    group = free_port(:udp)
    name = "exunit-#{group}"

    port =
      Port.open({:spawn_executable, System.fetch_env!("HEADCOUNT_BIN")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ~w(serve --listen 127.0.0.1:#{listen} --group 239.255.70.79:#{group} --cluster #{name}
                 --key-file #{key} --tick 50ms --workers 1)
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    on_exit(fn ->
      Headcount.stop()
      System.cmd("kill", [Integer.to_string(os_pid)])
      File.rm_rf(dir)
    end)

    sock =
      eventually(
        fn ->
          case :gen_tcp.connect(
                 {127, 0, 0, 1},
                 listen,
                 [:binary, active: false, packet: :line],
                 200
               ) do
            {:ok, s} -> s
            _ -> false
          end
        end,
        10_000
      )

    assert is_port(sock), "headcount serve did not listen on #{listen}"

    start_headcount(
      cluster: [multicast: {{239, 255, 70, 79}, group}],
      cluster_name: name,
      key_file: key,
      tick: 50
    )

    %{sock: sock, listen: listen}
  end

  test "a BEAM node and a headcount serve node count each other's users", %{
    sock: sock,
    listen: listen
  } do
    # Two presences on the serve node (one RESP connection), three here.
    resp(sock, ["JOIN", "room"])
    resp(sock, ["JOIN", "room"])
    pids = for _ <- 1..3, do: holder(["room"])

    assert eventually(fn -> Headcount.sync() == :ok and Headcount.count("room") == 5 end, 10_000) ==
             true,
           "BEAM side counts #{Headcount.count("room")}"

    assert eventually(fn -> resp(sock, ["COUNT", "room"]) == 5 end, 10_000) == true
    assert Headcount.count_local("room") == 3
    assert [%{alive: true, found: :multicast}] = Headcount.nodes()

    # The serve node's presences end with its connection; ours with our processes.
    :gen_tcp.close(sock)

    assert eventually(fn -> Headcount.sync() == :ok and Headcount.count("room") == 3 end, 10_000) ==
             true

    for p <- pids, do: send(p, :stop)

    {:ok, sock2} = :gen_tcp.connect({127, 0, 0, 1}, listen, [:binary, active: false, packet: :line])
    assert eventually(fn -> resp(sock2, ["COUNT", "room"]) == 0 end, 10_000) == true
    :gen_tcp.close(sock2)
  end
end
