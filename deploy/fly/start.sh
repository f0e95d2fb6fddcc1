#!/usr/bin/env bash
# start-with-headcount: runs `headcount serve` beside your app in one Fly Machine, then your app
# (the rest of the command line), and exits when either exits, so that Fly restarts the Machine.
# SIGINT or SIGTERM (fly.toml's kill_signal) stops the app first, then headcount, which closes
# its connections and says goodbye to the cluster.
#
#   start-with-headcount /usr/local/bin/your-app --port 8080
#
# Needs FLY_APP_NAME (Fly sets it) and the Fly secret HEADCOUNT_CLUSTER_KEY, the cluster key in
# base64: fly secrets set HEADCOUNT_CLUSTER_KEY="$(head -c 32 /dev/urandom | base64 -w0)"
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: start-with-headcount YOUR-APP [ARGS...]" >&2
    exit 2
fi
headcount=${HEADCOUNT_BIN:-/usr/local/bin/headcount}
app=${FLY_APP_NAME:?FLY_APP_NAME is not set (Fly sets it on a Machine)}

# The key, from the secret into a file only this user can read; the app does not get it.
key_dir=$(mktemp -d)
trap 'rm -rf "$key_dir"' EXIT
chmod 0700 "$key_dir"
(umask 077 && printf '%s' "${HEADCOUNT_CLUSTER_KEY:?the Fly secret HEADCOUNT_CLUSTER_KEY is not set}" |
    base64 -d >"$key_dir/key")
unset HEADCOUNT_CLUSTER_KEY

# 6PN, Fly's private network, is IPv6: bind the cluster socket on [::] (fly-local-6pn is this
# Machine's 6PN address, but --cluster-bind takes an address, not a name), and find the peers
# through <app>.internal, whose AAAA records are the app's Machines. RESP stays on loopback.
"$headcount" serve \
    --listen 127.0.0.1:7379 \
    --cluster "$app" \
    --cluster-bind "[::]:7380" \
    --peers-dns "$app.internal:7380" \
    --key-file "$key_dir/key" \
    --metrics "[::]:9379" \
    --log-format json &
headcount_pid=$!

stop() {
    if [ -n "${app_pid:-}" ] && kill -TERM "$app_pid" 2>/dev/null; then
        wait "$app_pid" 2>/dev/null || true
    fi
    if kill -TERM "$headcount_pid" 2>/dev/null; then
        wait "$headcount_pid" 2>/dev/null || true
    fi
}
trap 'stop; exit 0' INT TERM

# The app starts once headcount answers (10 s at most).
for _ in $(seq 100); do
    "$headcount" ping --quiet --timeout 1s 2>/dev/null && break
    kill -0 "$headcount_pid" 2>/dev/null || { wait "$headcount_pid" || exit $?; exit 1; }
    sleep 0.1
done
"$headcount" ping --timeout 1s >&2 || { stop; exit 1; }
# headcount read the key before it answered: take it off the disk.
rm -rf "$key_dir"

"$@" &
app_pid=$!

# Whichever exits first, stop the other and exit with its status.
status=0
wait -n || status=$?
echo "start-with-headcount: a process exited (status $status); stopping the other" >&2
stop
exit "$status"
