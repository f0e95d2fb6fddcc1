#!/usr/bin/env python3
"""Checks what the READMEs under deploy/ rely on, across files, beyond what a schema can say: the
Kubernetes manifests agree with each other (names, ports, labels, the key's path) and with the
hardening their README promises, the Dockerfile has the shape deploy/ assumes, the systemd unit
agrees with its sample config, and the Fly fragment with its start script.

    python3 deploy/check_manifests.py ARGS_JSON

Needs PyYAML (kubernetes-validate brings it) and Python 3.11 (tomllib). Writes the headcount
command lines it found to ARGS_JSON ({"file": [flag, ...]}), for deploy/check.sh to run through
the built binary. Prints one line per check; exits 1 at the first that fails.
"""

import json
import os
import re
import shlex
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "deploy", "kubernetes")


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def flags(args):
    """`--name=value` / `--name value` / `--switch` -> {name: value or True}."""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        assert a.startswith("--"), f"not a flag: {a}"
        name, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = True
        out[name] = value
        i += 1
    return out


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def kubernetes(found):
    docs = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml"):
            with open(os.path.join(K8S, name), encoding="utf-8") as f:
                docs[name] = [d for d in yaml.safe_load_all(f) if d]
    kust = docs.pop("kustomization.yaml")[0]
    listed = set(kust["resources"])
    check(
        listed == set(docs) - {"secret.example.yaml"},
        "kustomization.yaml lists every manifest but secret.example.yaml",
    )
    by_kind = {d["kind"]: d for ds in docs.values() for d in ds}
    dep, svc, pdb, secret = (
        by_kind[k] for k in ("Deployment", "Service", "PodDisruptionBudget", "Secret")
    )
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]

    def selects(sel):
        return sel and all(labels.get(k) == v for k, v in sel.items())

    check(selects(dep["spec"]["selector"]["matchLabels"]), "the Deployment selects its pods")
    check(selects(svc["spec"]["selector"]), "the headless Service selects the same pods")
    check(selects(pdb["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget selects them")
    check(
        ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"]),
        "the PodDisruptionBudget sets one of maxUnavailable / minAvailable",
    )

    spec = pod["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "headcount"]
    check(
        len(sidecars) == 1 and sidecars[0].get("restartPolicy") == "Always",
        "headcount is a native sidecar (an init container with restartPolicy: Always)",
    )
    hc = sidecars[0]
    args = hc["args"]
    check(args[0].startswith("--"), "the sidecar's args are serve's flags (the image's entrypoint is `headcount serve`)")
    f = flags(args)
    env = {e["name"]: e for e in hc.get("env", [])}

    # Discovery: the headless Service, with not-ready pods listed, on the cluster's UDP port.
    check(svc["spec"].get("clusterIP") == "None", "the Service is headless (clusterIP: None)")
    check(
        svc["spec"].get("publishNotReadyAddresses") is True,
        "the Service publishes not-ready pods (peers find each other before ready)",
    )
    udp = [p for p in svc["spec"]["ports"] if p.get("protocol") == "UDP"]
    check(len(udp) == 1, "the Service has one UDP port")
    sport = udp[0]
    want = f"{svc['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local:{sport['port']}"
    check(f.get("peers-dns") == want, f"--peers-dns is the Service's name and port ({want})")
    check(
        env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        == "metadata.namespace",
        "POD_NAMESPACE (in --peers-dns) comes from the pod's namespace",
    )
    cports = {p["name"]: p for p in hc["ports"]}
    target = cports.get(sport["targetPort"]) if isinstance(sport["targetPort"], str) else None
    check(
        target is not None
        and target.get("protocol") == "UDP"
        and target["containerPort"] == port_of(f["cluster-bind"]) == sport["port"],
        "--cluster-bind's port is the sidecar's UDP containerPort and the Service's port",
    )

    # The key: a Secret's item, mounted read-only where --key-file points, readable by the user.
    key_dir, key_name = os.path.split(f["key-file"])
    mounts = {m["mountPath"]: m for m in hc["volumeMounts"]}
    check(key_dir in mounts and mounts[key_dir].get("readOnly") is True, "--key-file is on a read-only mount")
    vol = next(v for v in spec["volumes"] if v["name"] == mounts[key_dir]["name"])
    sec = vol.get("secret", {})
    check(
        sec.get("secretName") == secret["metadata"]["name"]
        and any(i["key"] in secret["data"] and i["path"] == key_name for i in sec.get("items", [])),
        "the mounted volume is the example Secret's key, at --key-file's name",
    )
    check(
        sec.get("defaultMode") == 0o440 and spec["securityContext"].get("fsGroup") is not None,
        "the key file is group-readable (0440) by fsGroup: the non-root user can read it",
    )

    # RESP on loopback for the app; probes run `headcount ping` against it.
    check(f["listen"].startswith("127.0.0.1:"), "RESP listens on loopback only (no password needed)")
    apps = spec["containers"]
    for c in apps:
        addr = {e["name"]: e.get("value") for e in c.get("env", [])}.get("HEADCOUNT_ADDR")
        check(addr == f["listen"], f"container {c['name']}: HEADCOUNT_ADDR is --listen")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = hc.get(probe, {})
        cmd = p.get("exec", {}).get("command", [])
        check(cmd[:2] == ["headcount", "ping"], f"{probe}: exec headcount ping")
        pt = cmd[cmd.index("--timeout") + 1] if "--timeout" in cmd else "1s"
        secs = float(pt.rstrip("s"))
        check(secs < p.get("timeoutSeconds", 1), f"{probe}: ping --timeout {pt} < timeoutSeconds")
        found[f"deploy/kubernetes/deployment.yaml ({probe})"] = cmd[1:]

    # Metrics: served on the pod's address, on the port the annotations name.
    ann = pod["metadata"].get("annotations", {})
    mport = port_of(f["metrics"])
    check(
        f["metrics"].startswith("0.0.0.0:")
        and ann.get("prometheus.io/port") == str(mport)
        and cports["metrics"]["containerPort"] == mport,
        "--metrics is on the pod's address, its port in the annotations and the ports",
    )

    # Resources and hardening, for every container.
    psc = spec["securityContext"]
    check(
        psc.get("runAsNonRoot") is True
        and psc.get("runAsUser", 0) != 0
        and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "the pod runs as non-root with the RuntimeDefault seccomp profile",
    )
    mem = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for c in [hc] + apps:
        r = c.get("resources", {})
        check(
            all(k in r.get("requests", {}) for k in ("cpu", "memory")) and "memory" in r.get("limits", {}),
            f"container {c['name']}: cpu and memory requests, a memory limit",
        )
        sc = c.get("securityContext", {})
        check(
            sc.get("allowPrivilegeEscalation") is False
            and sc.get("readOnlyRootFilesystem") is True
            and "ALL" in sc.get("capabilities", {}).get("drop", []),
            f"container {c['name']}: read-only root fs, no privilege escalation, all capabilities dropped",
        )
    limit = hc["resources"]["limits"]["memory"]
    limit_bytes = int(limit[:-2]) * mem[limit[-2:]]
    check(
        limit_bytes > int(f["max-client-memory"]),
        f"the sidecar's memory limit ({limit}) is above --max-client-memory",
    )
    found["deploy/kubernetes/deployment.yaml"] = ["serve"] + [
        a.replace("$(POD_NAMESPACE)", "default") for a in args
    ]
    return psc["runAsUser"]


def dockerfile(k8s_uid, found):
    text = read("Dockerfile")
    lines = re.sub(r"\\\n", " ", text).splitlines()
    inst = [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]

    def last(op):
        got = [l[len(op) :].strip() for l in inst if l.upper().startswith(op + " ")]
        return got[-1] if got else None

    check(sum(l.upper().startswith("FROM ") for l in inst) >= 2, "Dockerfile: multi-stage")
    check(last("ENTRYPOINT") == '["headcount", "serve"]', "Dockerfile: ENTRYPOINT headcount serve")
    user = last("USER") or "0"
    check(user.split(":")[0] == str(k8s_uid), f"Dockerfile: runs as uid {k8s_uid}, as the pod does")
    hc = re.search(r"\bCMD (\[.*\])", last("HEALTHCHECK") or "")
    cmd = json.loads(hc.group(1)) if hc else []
    check(cmd[:2] == ["headcount", "ping"], "Dockerfile: HEALTHCHECK runs headcount ping (exec form)")
    found["Dockerfile (HEALTHCHECK)"] = cmd[1:]
    exposed = set((last("EXPOSE") or "").split())
    check({"7379/tcp", "7380/udp"} <= exposed, "Dockerfile: EXPOSE 7379/tcp 7380/udp")
    check(
        any(l.startswith("COPY --from=") and l.endswith("/usr/local/bin/headcount") for l in inst),
        "Dockerfile: the binary lands on PATH (/usr/local/bin/headcount)",
    )
    ignored = read(".dockerignore").split()
    check("target/" in ignored and ".git/" in ignored, ".dockerignore: leaves out target/ and .git/")


def systemd(found):
    unit = read("deploy/systemd/headcount.service")
    keys = {}
    for l in unit.splitlines():
        if "=" in l and not l.lstrip().startswith(("#", ";", "[")):
            k, v = l.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    conf = tomllib.loads(read("deploy/systemd/headcount.toml"))
    nofile = int(keys["LimitNOFILE"][0])
    check(
        nofile == conf["max_connections"] + 1024,
        f"LimitNOFILE ({nofile}) is headcount.toml's max_connections + 1024",
    )
    check("key_file" not in conf, "headcount.toml leaves key_file to the unit (LoadCredential)")
    creds = dict(v.split(":", 1) for v in keys["LoadCredential"])
    argv = shlex.split(keys["ExecStart"][0])
    check(argv[0] == "/usr/local/bin/headcount" and argv[1] == "serve", "ExecStart runs headcount serve")
    used = re.findall(r"\$\{CREDENTIALS_DIRECTORY\}/([\w.-]+)", keys["ExecStart"][0])
    check(sorted(used) == sorted(creds), f"ExecStart uses every credential it loads ({', '.join(sorted(creds))})")
    check(
        creds.get("headcount.toml") == "/etc/headcount/headcount.toml" and creds.get("key") == "/etc/headcount/key",
        "the credentials come from /etc/headcount/headcount.toml and /etc/headcount/key",
    )
    for k, v in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "Restart": "on-failure",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        check(keys.get(k) == [v], f"headcount.service: {k}={v}")
    check("ProcSubset" not in keys, "headcount.service: no ProcSubset= (serve reads /proc/sys/kernel/hostname)")
    # $HEADCOUNT_OPTS (extra flags from /etc/default/headcount) is empty unless set.
    found["deploy/systemd/headcount.service"] = [
        a.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/headcount.service")
        for a in argv[1:]
        if not re.fullmatch(r"\$\w+", a)
    ]


def fly():
    conf = tomllib.loads(read("deploy/fly/fly.toml"))
    start = read("deploy/fly/start.sh")
    cmd = shlex.split(conf["processes"]["app"])
    check(cmd[0] == "/usr/local/bin/start-with-headcount" and len(cmd) > 1, "fly.toml: the app's process runs start-with-headcount YOUR-APP")
    listen = re.search(r"--listen (\S+)", start).group(1)
    check(conf["env"]["HEADCOUNT_ADDR"] == listen, "fly.toml: HEADCOUNT_ADDR is start.sh's --listen")
    metrics = re.search(r'--metrics "?([^"\s]+)', start).group(1)
    check(conf["metrics"]["port"] == port_of(metrics), "fly.toml: [metrics] port is start.sh's --metrics port")
    check(conf.get("kill_signal") in ("SIGINT", "SIGTERM"), "fly.toml: kill_signal is one start.sh traps")


def main():
    out = sys.argv[1]
    found = {}
    uid = kubernetes(found)
    dockerfile(uid, found)
    systemd(found)
    fly()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(found, f, indent=1)


if __name__ == "__main__":
    main()
