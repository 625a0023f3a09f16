#!/usr/bin/env bash
# Offline checks of the container and deployment files: Dockerfile, docker-compose.yml,
# deploy/ (Prometheus, Grafana, Kubernetes). Needs no Docker engine and no network, except
# once to install dockerfilelint from npm into a cache outside git.
#
#   scripts/docker_check.sh        exit 0 when every check passes
#
# Tools: python3 with PyYAML, node + npm (dockerfilelint; kubernetes-models and its KEDA and
# prometheus-operator packages, the Kubernetes JSON schemas, installed into the same kind of
# cache), promtool (Debian `prometheus`, installed by scripts/setup.sh), docker-compose 1.29
# (Debian `docker-compose`); kubectl only if present (`kubectl kustomize`).
# Cross-checks against the code: metric names used by the dashboard and the alerts must be
# registered in server/metrics.cc, and the sq-server flags used by the Dockerfile, compose
# and Kubernetes files must be defined in server/ (ABSL_FLAG) -- each once that code exists.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SQ_CACHE="${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}"
NPM_DIR="$SQ_CACHE/npm"
DOCKERFILELINT_VERSION=1.8.0
K8S_NPM_DIR="$SQ_CACHE/npm-k8s"
K8S_MODELS="kubernetes-models@5.1.0 @kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0"

failures=0
pass() { printf '  ok    %s\n' "$1"; }
fail() { printf '  FAIL  %s\n' "$1"; failures=$((failures + 1)); }
need() { command -v "$1" >/dev/null 2>&1 || { fail "$1 not found ($2)"; return 1; }; }
# run NAME CMD...: runs CMD quietly, shows its output only when it fails.
run() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name"; printf '%s\n' "$out" | sed 's/^/        /'; fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "Dockerfile"
lint="$NPM_DIR/node_modules/.bin/dockerfilelint"
if [[ ! -x "$lint" ]] && need npm "install Node.js/npm"; then
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent "dockerfilelint@$DOCKERFILELINT_VERSION" \
    >"$tmp/npm.log" 2>&1 || { fail "npm install dockerfilelint"; sed 's/^/        /' "$tmp/npm.log"; }
fi
[[ -x "$lint" ]] && run "dockerfilelint Dockerfile" "$lint" Dockerfile
run ".dockerignore keeps build trees and .git out of the context" \
  bash -c 'set -f; for p in .git build build-* .cache "**/*.onnx"; do grep -qxF -- "$p" .dockerignore || { echo "missing: $p"; exit 1; }; done'

echo "docker-compose.yml"
if need docker-compose "apt-get install docker-compose"; then
  run "docker-compose config -q" docker-compose -f docker-compose.yml config -q
fi

echo "Prometheus"
if need promtool "apt-get install prometheus (scripts/setup.sh does)"; then
  run "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
  run "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
  run "promtool test rules deploy/prometheus/alerts_test.yml" promtool test rules deploy/prometheus/alerts_test.yml
fi

echo "Grafana"
run "dashboard JSON is valid" python3 -m json.tool deploy/grafana/dashboards/sq.json
run "dashboard JSON is up to date with deploy/grafana/dashboard.py" \
  bash -c "python3 deploy/grafana/dashboard.py '$tmp/sq.json' && diff -u deploy/grafana/dashboards/sq.json '$tmp/sq.json'"

# Every PromQL expression of the dashboard, with Grafana's variables substituted, must parse:
# they are written into a rules file for promtool.
cat >"$tmp/promql.py" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append(t["expr"])
        walk(p.get("panels", []))
walk(d["panels"])
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
         "$job": "sq", "$instance": ".*"}
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    print(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(e)}")
PY
if command -v promtool >/dev/null 2>&1; then
  run "dashboard PromQL parses (promtool)" \
    bash -c "python3 '$tmp/promql.py' deploy/grafana/dashboards/sq.json > '$tmp/dash_rules.yml' && promtool check rules '$tmp/dash_rules.yml'"
fi

echo "YAML and Kubernetes manifests"
cat >"$tmp/k8s.py" <<'PY'
import glob, re, sys
import yaml

errors = []
files = ["docker-compose.yml"] + sorted(glob.glob("deploy/**/*.y*ml", recursive=True))
docs = {}
for f in files:
    try:
        docs[f] = [d for d in yaml.safe_load_all(open(f)) if d is not None]
    except yaml.YAMLError as e:
        errors.append(f"{f}: {e}")
print(f"parsed {len(docs)} YAML files", file=sys.stderr)

k8s = {}
for f in sorted(glob.glob("deploy/k8s/**/*.yaml", recursive=True)):
    if f.endswith("-values.yaml"):  # Helm values (autoscaling/), not Kubernetes objects
        continue
    for d in docs.get(f, []):
        if "kind" not in d:
            errors.append(f"{f}: document without kind")
            continue
        if d["kind"] != "Kustomization":
            if "namespace" in d.get("metadata", {}):
                errors.append(f"{f}: {d['kind']} sets a namespace (manifests are namespace-less)")
            k8s[(d["kind"], d["metadata"]["name"])] = (f, d)

kust = docs.get("deploy/k8s/kustomization.yaml", [{}])[0]
for r in kust.get("resources", []):
    if not glob.glob(f"deploy/k8s/{r}"):
        errors.append(f"kustomization.yaml lists missing {r}")
    if r.startswith(("autoscaling/", "monitoring/")):
        errors.append(f"kustomization.yaml lists {r}, which needs CRDs or add-ons (apply it on its own)")

def dur_s(v):
    m = re.fullmatch(r"(\d+)(s|m)", v)
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else None

dep = k8s.get(("Deployment", "sq"), (None, None))[1]
cm = k8s.get(("ConfigMap", "sq-config"), (None, {}))[1] or {}
svc = k8s.get(("Service", "sq"), (None, None))[1]
if not dep or not svc:
    errors.append("Deployment sq or Service sq missing")
else:
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("grpc") != 50051 or ports.get("metrics") != 9464:
        errors.append(f"container ports {ports}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if c.get(probe, {}).get("grpc", {}).get("port") != 50051:
            errors.append(f"{probe} is not a grpc probe on 50051")
    sc = spec.get("securityContext", {})
    if not sc.get("runAsNonRoot") or not sc.get("runAsUser"):
        errors.append("pod does not run as a non-root uid")
    if not c.get("resources", {}).get("limits") or not c.get("resources", {}).get("requests"):
        errors.append("container without resource requests/limits")
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != "9464":
        errors.append("pod lacks prometheus.io scrape annotations for 9464")
    drain = dur_s(cm.get("data", {}).get("SQ_DRAIN_GRACE_SECONDS", "") + "s")
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_s = int(pre[1]) if pre[:1] == ["sleep"] else 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    # The server adds 2 s for open streams after the drain (server/server.cc).
    if drain is None or grace < pre_s + drain + 2:
        errors.append(f"terminationGracePeriodSeconds {grace} < preStop {pre_s} s + drain {drain} s + 2 s")
    live = c["livenessProbe"]
    if drain and live["periodSeconds"] * live["failureThreshold"] <= drain:
        errors.append("livenessProbe would kill a pod during its drain")
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    if svc_ports != {"grpc": 50051, "metrics": 9464}:
        errors.append(f"Service ports {svc_ports}")
    sel = svc["spec"]["selector"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        errors.append("Service selector does not match the pod labels")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    for cl in claims:
        if ("PersistentVolumeClaim", cl) not in k8s:
            errors.append(f"PVC {cl} not defined")

    # Scale-out (docs/deploy.md): several replicas share one ReadWriteMany artifact volume and
    # replace each other one at a time; a budget and the autoscalers agree with that.
    replicas = dep["spec"].get("replicas", 1)
    strategy = dep["spec"].get("strategy", {})
    for cl in claims:
        pvc = k8s.get(("PersistentVolumeClaim", cl), (None, {}))[1] or {}
        modes = pvc.get("spec", {}).get("accessModes", [])
        if replicas > 1 and "ReadWriteMany" not in modes:
            errors.append(f"{replicas} replicas share PVC {cl}, which is not ReadWriteMany ({modes})")
        if strategy.get("type") == "RollingUpdate" and "ReadWriteMany" not in modes:
            errors.append(f"RollingUpdate needs PVC {cl} ReadWriteMany (old and new pod mount it at once)")
    if replicas > 1:
        ru = strategy.get("rollingUpdate", {})
        if strategy.get("type") != "RollingUpdate" or ru.get("maxUnavailable") not in (0, "0%"):
            errors.append("several replicas: strategy must be RollingUpdate with maxUnavailable 0")
    pdbs = [d for (kind, _), (_, d) in k8s.items() if kind == "PodDisruptionBudget"]
    if replicas > 1 and len(pdbs) != 1:
        errors.append(f"{len(pdbs)} PodDisruptionBudgets for sq (want 1)")
    for pdb in pdbs:
        psel = pdb["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in psel.items()):
            errors.append("PodDisruptionBudget selector does not match the pod labels")
        if not isinstance(pdb["spec"].get("minAvailable"), int) or pdb["spec"]["minAvailable"] >= replicas:
            errors.append(f"PodDisruptionBudget minAvailable {pdb['spec'].get('minAvailable')} leaves no "
                          f"disruption to {replicas} replicas")
    # Autoscalers (autoscaling/): scale this Deployment, never below what the budget needs.
    budget = max([p["spec"].get("minAvailable", 0) for p in pdbs] or [0])
    for (kind, name), (f, d) in k8s.items():
        if kind not in ("ScaledObject", "HorizontalPodAutoscaler"):
            continue
        ref = d["spec"]["scaleTargetRef"]
        if (ref.get("kind", "Deployment"), ref["name"]) != ("Deployment", dep["metadata"]["name"]):
            errors.append(f"{f}: scales {ref}, not Deployment {dep['metadata']['name']}")
        lo = d["spec"].get("minReplicaCount" if kind == "ScaledObject" else "minReplicas", 1)
        hi = d["spec"].get("maxReplicaCount" if kind == "ScaledObject" else "maxReplicas", 100)
        if lo <= budget or lo > hi:
            errors.append(f"{f}: min replicas {lo} must exceed the budget's minAvailable {budget} and not exceed max {hi}")
        if lo != replicas:
            errors.append(f"{f}: min replicas {lo} differs from the Deployment's replicas {replicas}")
    hpa = k8s.get(("HorizontalPodAutoscaler", "sq"), (None, None))[1]
    values = docs.get("deploy/k8s/autoscaling/prometheus-adapter-values.yaml", [None])[0]
    if hpa and values:
        served = {r["name"]["as"] for r in values["rules"]["custom"]}
        for m in hpa["spec"]["metrics"]:
            name = m.get(m["type"].lower(), {}).get("metric", {}).get("name")
            if name not in served:
                errors.append(f"HPA metric {name} is not served by prometheus-adapter-values.yaml ({served})")
    # The monitors scrape the port the pod and the Service name `metrics`.
    for (kind, name), (f, d) in k8s.items():
        if kind == "PodMonitor":
            bad = [e["port"] for e in d["spec"]["podMetricsEndpoints"] if e["port"] not in ports]
        elif kind == "ServiceMonitor":
            bad = [e["port"] for e in d["spec"]["endpoints"] if e["port"] not in svc_ports]
            ssel = d["spec"]["selector"]["matchLabels"]
            if any(svc["metadata"].get("labels", {}).get(k) != v for k, v in ssel.items()):
                errors.append(f"{f}: selector does not match the Service's labels")
        else:
            continue
        if bad:
            errors.append(f"{f}: scrapes port(s) {bad} that sq does not name")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
run "YAML parses; Kubernetes manifests are consistent" python3 "$tmp/k8s.py"

echo "Kubernetes schemas (offline)"
# Every object under deploy/k8s/ (and what `kubectl kustomize` makes of the base, where
# kubectl exists) against the JSON schemas of its kind: Kubernetes' own OpenAPI (npm
# kubernetes-models) and the CRDs of KEDA and the Prometheus Operator. The compiled
# validators check types, required fields, enums and formats; fields a schema does not
# define (typos) are found by recording which keys the validator reads.
if [[ ! -d "$K8S_NPM_DIR/node_modules/kubernetes-models" ]] && need npm "install Node.js/npm"; then
  mkdir -p "$K8S_NPM_DIR"
  # shellcheck disable=SC2086  # K8S_MODELS is a list of package specs
  npm install --prefix "$K8S_NPM_DIR" --no-audit --no-fund --silent $K8S_MODELS \
    >"$tmp/npm-k8s.log" 2>&1 || { fail "npm install $K8S_MODELS"; sed 's/^/        /' "$tmp/npm-k8s.log"; }
fi
cat >"$tmp/k8s_json.py" <<'PY'
import glob, json, sys
import yaml
out = []
if len(sys.argv) > 1:  # a multi-document stream (kubectl kustomize) on stdin
    out = [{"file": sys.argv[1], "doc": d} for d in yaml.safe_load_all(sys.stdin) if d]
else:
    for f in sorted(glob.glob("deploy/k8s/**/*.yaml", recursive=True)):
        if f.endswith(("kustomization.yaml", "-values.yaml")):
            continue
        out += [{"file": f, "doc": d} for d in yaml.safe_load_all(open(f)) if d]
json.dump(out, sys.stdout)
PY
cat >"$tmp/k8s_schema.mjs" <<'JS'
// node k8s_schema.mjs DOCS.json: DOCS is [{file, doc}]; exit 1 on any error.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
const modules = process.env.K8S_NPM_DIR + "/node_modules/";
const packages = { "keda.sh": "@kubernetes-models/keda", "monitoring.coreos.com": "@kubernetes-models/prometheus-operator" };
// Wraps every object in a Proxy that records the keys a validator reads.
function track(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  const read = new Set();
  seen.push({ path, value, read });
  const copy = Array.isArray(value) ? [] : {};
  for (const k of Object.keys(value)) copy[k] = track(value[k], `${path}/${k}`, seen);
  const note = (k) => { if (typeof k === "string") read.add(k); };
  return new Proxy(copy, {
    get(t, k, r) { note(k); return Reflect.get(t, k, r); },
    has(t, k) { note(k); return Reflect.has(t, k); },
    ownKeys(t) { Reflect.ownKeys(t).forEach(note); return Reflect.ownKeys(t); },
  });
}
async function load(pkg, sub) {  // the package's export "./<sub>", from the cache folder
  const dir = modules + pkg;
  const meta = JSON.parse(readFileSync(dir + "/package.json", "utf8"));
  const entry = meta.exports?.["./" + sub];
  const file = typeof entry === "string" ? entry : entry?.import ?? entry?.default;
  return file ? import(pathToFileURL(dir + "/" + file).href) : {};
}
let errors = 0, checked = 0;
const fail = (msg) => { console.log(msg); errors++; };
for (const { file, doc } of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
  const [group, version] = doc.apiVersion.includes("/") ? doc.apiVersion.split("/") : ["", doc.apiVersion];
  const pkg = packages[group] ?? "kubernetes-models";
  const sub = packages[group] ? `${group}/${version}` : group ? `${group}/${version}` : version;
  let Model;
  try { Model = (await load(pkg, sub))[doc.kind]; } catch (e) { fail(`${where}: ${e.message}`); continue; }
  if (!Model) { fail(`${where}: no schema for ${doc.apiVersion} ${doc.kind} in ${pkg}`); continue; }
  const seen = [];
  const proxy = track(doc, "", seen);
  try { Model.prototype.validate.call(proxy); } catch (e) { fail(`${where}: ${e.message}`); continue; }
  for (const { path, value, read } of seen) {
    if (Array.isArray(value) || read.size === 0) continue;  // free-form objects: nothing read
    for (const k of Object.keys(value)) if (!read.has(k)) fail(`${where}: ${path}/${k} is not a field of its schema`);
  }
  checked++;
}
console.error(`${checked} objects valid`);
process.exit(errors ? 1 : 0);
JS
if [[ -d "$K8S_NPM_DIR/node_modules/kubernetes-models" ]] && need node "install Node.js"; then
  run "deploy/k8s/**/*.yaml match their Kubernetes, KEDA and Prometheus Operator schemas" \
    bash -c "python3 '$tmp/k8s_json.py' > '$tmp/k8s_docs.json' && K8S_NPM_DIR='$K8S_NPM_DIR' node '$tmp/k8s_schema.mjs' '$tmp/k8s_docs.json'"
  if command -v kubectl >/dev/null 2>&1; then
    run "kubectl kustomize deploy/k8s builds, and its output matches the schemas" \
      bash -c "kubectl kustomize deploy/k8s | python3 '$tmp/k8s_json.py' 'kubectl kustomize deploy/k8s' > '$tmp/k8s_kust.json' && K8S_NPM_DIR='$K8S_NPM_DIR' node '$tmp/k8s_schema.mjs' '$tmp/k8s_kust.json'"
  else
    echo "  skip  kubectl kustomize (no kubectl)"
  fi
fi

echo "Autoscaling queries"
run "autoscaling_queries.rules.yml is up to date with deploy/k8s/autoscaling/queries.py" \
  bash -c "python3 deploy/k8s/autoscaling/queries.py '$tmp/autoscaling_queries.rules.yml' && diff -u deploy/k8s/autoscaling/autoscaling_queries.rules.yml '$tmp/autoscaling_queries.rules.yml'"
if command -v promtool >/dev/null 2>&1; then
  run "promtool test rules deploy/k8s/autoscaling/autoscaling_test.yml (both label schemes)" \
    promtool test rules deploy/k8s/autoscaling/autoscaling_test.yml
fi

echo "Cross-checks against server/"
if [[ -f server/metrics.cc ]]; then
  cat >"$tmp/metrics.py" <<'PY'
import re, sys
registered = set(re.findall(r'\.Name\("([a-z_:]+)"\)', open("server/metrics.cc").read()))
# Families built at scrape time (server/process_metrics.cc) name themselves directly.
registered |= set(re.findall(r'\.name = "([a-z_:]+)"', open("server/process_metrics.cc").read()))
used = {}
import glob
for f in ["deploy/grafana/dashboards/sq.json", "deploy/prometheus/alerts.yml"] + sorted(
        glob.glob("deploy/k8s/autoscaling/*.yaml")):
    for m in re.findall(r'\b((?:sq|grpc_server)_[a-z0-9_]+)', open(f).read()):
        used.setdefault(re.sub(r'_(bucket|sum|count)$', '', m), f)
# Names prometheus-adapter serves (derived from sq's metrics, never scraped themselves).
import yaml
values = yaml.safe_load(open("deploy/k8s/autoscaling/prometheus-adapter-values.yaml"))
registered |= {r["name"]["as"] for r in values["rules"]["custom"]}
missing = sorted(m for m in used if m not in registered and re.sub(r'_(bucket|sum|count)$', '', m) not in registered)
for m in missing:
    print(f"{used[m]} uses {m}, not registered in server/metrics.cc or process_metrics.cc")
sys.exit(1 if missing else 0)
PY
  run "dashboard, alerts and autoscaling use only metrics registered in server/metrics.cc" python3 "$tmp/metrics.py"
else
  echo "  skip  server/metrics.cc not present"
fi
if grep -rqs 'ABSL_FLAG' server/; then
  cat >"$tmp/flags.py" <<'PY'
import glob, re, sys
defined = set()
for f in glob.glob("server/*.cc"):
    defined |= set(re.findall(r'ABSL_FLAG\(\s*[^,]+,\s*(\w+)\s*,', open(f).read()))
import json, yaml
args = {}  # flag -> file, over every sq-server command line in the deployment files
for line in open("Dockerfile"):
    for instr in ("ENTRYPOINT ", "CMD "):
        if line.startswith(instr) and line[len(instr):].lstrip().startswith("["):
            args.setdefault("Dockerfile", []).extend(json.loads(line[len(instr):]))
compose = yaml.safe_load(open("docker-compose.yml"))
args["docker-compose.yml"] = compose["services"]["sq"].get("command", [])
for f in glob.glob("deploy/k8s/*.yaml"):
    for d in yaml.safe_load_all(open(f)):
        if d and d.get("kind") == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                args.setdefault(f, []).extend(c.get("args", []))
used = {}
for f, a in args.items():
    for arg in a:
        m = re.match(r"--(\w+)", arg)
        if m:
            used.setdefault(m.group(1), f)
bad = sorted(fl for fl in used if fl not in defined)
for fl in bad:
    print(f"{used[fl]} passes --{fl}, which server/ does not define")
sys.exit(1 if bad else 0)
PY
  run "sq-server flags used by the deployment files exist (ABSL_FLAG in server/)" python3 "$tmp/flags.py"
else
  echo "  skip  no ABSL_FLAG in server/ yet"
fi

if ((failures)); then
  echo "docker_check: $failures check(s) failed"
  exit 1
fi
echo "docker_check: all checks passed"
