#!/usr/bin/env bash
# Checks the files that run headcount: deploy/kubernetes/, deploy/systemd/, deploy/fly/ and the
# Dockerfile. Prints what it checked; exits non-zero at the first failure.
#
#   bash deploy/check.sh
#
# Tools: kubernetes-validate and yamllint (PyPI; found on PATH or in the venv
# ${HEADCOUNT_DEPLOY_VENV:-target/deploy-venv}), systemd-analyze (Debian's systemd), shellcheck
# (Debian's shellcheck), python3 with PyYAML (the venv's has it), cargo (builds the headcount
# binary whose flags the files use; or give it as HEADCOUNT_BIN). A missing tool skips its
# check with the reason, or fails the run when HEADCOUNT_REQUIRE_TOOLS is set (CI). The venv:
#
#   python3 -m venv target/deploy-venv
#   target/deploy-venv/bin/pip install kubernetes-validate==1.37.0 yamllint==1.38.0
#
# Nothing here needs the network: kubernetes-validate carries the Kubernetes schemas.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${HEADCOUNT_DEPLOY_VENV:-target/deploy-venv}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
checked=0
skipped=()

section() { printf '\n--- %s\n' "$*"; }
ok() {
    echo "ok: $*"
    checked=$((checked + 1))
}
fail() {
    echo "FAILED: $*"
    exit 1
}
skip() {
    if [ -n "${HEADCOUNT_REQUIRE_TOOLS:-}" ]; then
        fail "$1 (HEADCOUNT_REQUIRE_TOOLS is set: a missing tool is a failure)"
    fi
    echo "SKIPPED: $1"
    skipped+=("$1")
}
# A tool's path: on PATH, or in the venv.
tool() {
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    elif [ -x "$venv/bin/$1" ]; then
        echo "$venv/bin/$1"
    fi
}
venv_hint="python3 -m venv $venv && $venv/bin/pip install kubernetes-validate yamllint"

manifests=()
for f in deploy/kubernetes/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done

section "Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate --strict: unknown fields are errors)"
kv=$(tool kubernetes-validate)
if [ -z "$kv" ]; then
    skip "kubernetes-validate not found ($venv_hint)"
else
    "$kv" --version
    # 1.29: the first release with native sidecars (restartPolicy on an init container); and the
    # newest whose schemas it carries.
    for version in 1.29.0 default; do
        args=(--strict)
        [ "$version" = default ] || args+=(-k "$version")
        if ! "$kv" "${args[@]}" "${manifests[@]}"; then
            fail "kubernetes-validate ${args[*]}"
        fi
        ok "${manifests[*]} valid against Kubernetes ${version/default/(newest bundled)}"
    done
fi

section "YAML style (yamllint, strict)"
yl=$(tool yamllint)
if [ -z "$yl" ]; then
    skip "yamllint not found ($venv_hint)"
else
    rules='{extends: default, rules: {line-length: {max: 100}, document-start: disable}}'
    if ! "$yl" --strict -d "$rules" deploy/kubernetes/; then
        fail "yamllint deploy/kubernetes/"
    fi
    ok "yamllint: deploy/kubernetes/*.yaml"
fi

section "What the READMEs rely on, across the files (deploy/check_manifests.py)"
py=""
for p in "$venv/bin/python3" python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml, tomllib' 2>/dev/null; then
        py=$p
        break
    fi
done
if [ -z "$py" ]; then
    skip "no python3 (3.11 or later) with PyYAML ($venv_hint)"
else
    "$py" deploy/check_manifests.py "$tmp/args.json"
    ok "deploy/check_manifests.py"
fi

section "deploy/fly/start.sh runs headcount, then the app, and stops both (with a stub headcount)"
fly="$tmp/fly"
mkdir -p "$fly/tmp"
cat >"$fly/headcount" <<'EOF'
#!/bin/sh
# A stand-in for headcount: `serve` records its flags and key and runs until SIGTERM; `ping`
# answers once serve has started.
case "$1" in
serve)
    shift
    # The key first, as headcount reads it before it answers.
    prev=""
    for a in "$@"; do
        [ "$prev" = --key-file ] && cp "$a" "$STUB_DIR/key"
        prev=$a
    done
    printf '%s\n' "$@" >"$STUB_DIR/serve.args.tmp" && mv "$STUB_DIR/serve.args.tmp" "$STUB_DIR/serve.args"
    trap 'touch "$STUB_DIR/serve.stopped"; exit 0' TERM
    while :; do sleep 0.05; done
    ;;
ping) [ -f "$STUB_DIR/serve.args" ] ;;
*) exit 2 ;;
esac
EOF
chmod +x "$fly/headcount"
key=$(head -c 32 /dev/urandom | base64 -w0)
start=(env FLY_APP_NAME=chat HEADCOUNT_BIN="$fly/headcount" HEADCOUNT_CLUSTER_KEY="$key"
    STUB_DIR="$fly" TMPDIR="$fly/tmp" timeout --foreground 30 bash deploy/fly/start.sh)
# The app exits (status 3): headcount is stopped, and start.sh exits with the app's status.
status=0
# shellcheck disable=SC2016 # expanded by the app's shell
"${start[@]}" sh -c 'echo "key in the app: ${HEADCOUNT_CLUSTER_KEY:-none}" >"$STUB_DIR/app.out"; exit 3' || status=$?
[ "$status" = 3 ] || fail "start.sh exited $status, not the app's 3"
if ! grep -qx -- '--peers-dns' "$fly/serve.args" || ! grep -qx 'chat.internal:7380' "$fly/serve.args"; then
    fail "start.sh: no --peers-dns chat.internal:7380 in $(tr '\n' ' ' <"$fly/serve.args")"
fi
grep -qx '\[::\]:7380' "$fly/serve.args" || fail "start.sh: --cluster-bind is not [::]:7380"
[ "$(base64 -w0 <"$fly/key")" = "$key" ] || fail "start.sh: the key file is not the secret, decoded"
grep -qx 'key in the app: none' "$fly/app.out" || fail "start.sh: the app sees the key: $(cat "$fly/app.out")"
[ -f "$fly/serve.stopped" ] || fail "start.sh: headcount was not stopped after the app exited"
ok "start.sh: headcount gets --peers-dns chat.internal:7380, --cluster-bind [::]:7380 and the decoded key; the app does not; the app's exit stops headcount and is the exit status"
# SIGTERM: the app, then headcount, are stopped and start.sh exits 0.
rm -f "$fly/serve.args" "$fly/serve.stopped"
# (timeout --foreground passes the signal on to start.sh alone, as Fly's init would.)
# shellcheck disable=SC2016 # expanded by the app's shell
"${start[@]}" sh -c 'touch "$STUB_DIR/app.started"; exec sleep 30' &
start_pid=$!
for _ in $(seq 100); do
    [ -f "$fly/app.started" ] && break
    sleep 0.1
done
[ -f "$fly/app.started" ] || fail "start.sh: the app did not start within 10 s"
kill -TERM "$start_pid"
status=0
wait "$start_pid" || status=$?
[ "$status" = 0 ] || fail "start.sh exited $status on SIGTERM, not 0"
[ -f "$fly/serve.stopped" ] || fail "start.sh: headcount was not stopped on SIGTERM"
[ -z "$(ls -A "$fly/tmp")" ] || fail "start.sh: the key is left on disk: $(ls -A "$fly/tmp")"
ok "start.sh: on SIGTERM, stops the app and headcount, exits 0; no key left on disk"
tr '\n' '\0' <"$fly/serve.args" >"$tmp/fly-serve.args0"

section "The headcount flags the files use exist, and their values parse (headcount ... --help on the built binary)"
bin=${HEADCOUNT_BIN:-}
if [ -z "$bin" ] && command -v cargo >/dev/null 2>&1; then
    cargo build -q -p headcount-server --bin headcount
    bin=${CARGO_TARGET_DIR:-target}/debug/headcount
fi
if [ -z "$bin" ]; then
    skip "no cargo to build headcount (or give HEADCOUNT_BIN)"
elif [ -z "$py" ]; then
    skip "no command lines: deploy/check_manifests.py did not run"
else
    # One NUL-separated file per command line: the manifests' (from check_manifests.py) and
    # start.sh's (as the stub recorded it).
    "$py" - "$tmp/args.json" "$tmp/cmd" <<'EOF'
import json, sys
for i, (name, args) in enumerate(json.load(open(sys.argv[1])).items()):
    with open(f"{sys.argv[2]}.{i}", "w") as f:
        f.write(name + "\0" + "".join(a + "\0" for a in args))
EOF
    { printf 'deploy/fly/start.sh\0serve\0' && cat "$tmp/fly-serve.args0"; } >"$tmp/cmd.fly"
    for c in "$tmp"/cmd.*; do
        mapfile -d '' -t words <"$c"
        name=${words[0]}
        args=("${words[@]:1}")
        # clap parses left to right, checking each flag and value, before --help answers.
        if ! "$bin" "${args[@]}" --help >/dev/null 2>"$tmp/err"; then
            cat "$tmp/err"
            fail "$name: headcount ${args[*]}"
        fi
        ok "$name: headcount ${args[*]}"
    done
fi

section "systemd unit (systemd-analyze verify, and security --offline: exposure at most 2.0)"
sa=$(tool systemd-analyze)
if [ -z "$sa" ]; then
    skip "systemd-analyze not found (apt-get install systemd)"
else
    "$sa" --version | head -n 1
    # verify insists that ExecStart's binary exists: check a copy of the unit that runs a stub
    # in place of /usr/local/bin/headcount (everything else as written).
    mkdir -p "$tmp/systemd/bin"
    printf '#!/bin/sh\nexit 0\n' >"$tmp/systemd/bin/headcount"
    chmod +x "$tmp/systemd/bin/headcount"
    unit="$tmp/systemd/headcount.service"
    sed "s#/usr/local/bin/headcount#$tmp/systemd/bin/headcount#g" deploy/systemd/headcount.service >"$unit"
    grep -q "^ExecStart=$tmp/systemd/bin/headcount serve" "$unit" ||
        fail "headcount.service: ExecStart does not run /usr/local/bin/headcount serve"
    # verify warns (unknown keys, bad values) and still exits 0: any output is a failure.
    out=$("$sa" verify "$unit" 2>&1) || fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify deploy/systemd/headcount.service: $out"
    ok "systemd-analyze verify deploy/systemd/headcount.service: no errors or warnings"
    if ! "$sa" security --help 2>&1 | grep -q -- --offline; then
        skip "this systemd-analyze has no 'security --offline' (systemd 250 or later)"
    else
        out=$("$sa" security --offline=yes --threshold=20 "$unit" 2>&1) || {
            echo "$out"
            fail "systemd-analyze security: exposure above 2.0"
        }
        ok "systemd-analyze security: $(echo "$out" | grep -o 'exposure level.*' | sed "s#$tmp/systemd/##")"
    fi
fi

section "shell scripts (shellcheck)"
sc=$(tool shellcheck)
if [ -z "$sc" ]; then
    skip "shellcheck not found (apt-get install shellcheck)"
else
    "$sc" deploy/check.sh deploy/fly/start.sh || fail "shellcheck"
    ok "shellcheck deploy/check.sh deploy/fly/start.sh"
fi

echo
if [ "${#skipped[@]}" -gt 0 ]; then
    echo "deploy/check.sh: $checked checks ok, ${#skipped[@]} skipped: ${skipped[*]}"
else
    echo "deploy/check.sh: $checked checks ok, none skipped"
fi
