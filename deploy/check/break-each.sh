#!/usr/bin/env bash
# Shows that each deploy check can fail: breaks one deploy/ file at a time the way a careless
# edit would, runs the check that should catch it, and puts the file back. Every line of the
# summary should read "caught". Takes about six minutes; not part of CI.
#   bash deploy/check/break-each.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
saved=$(mktemp)
current=
restore() { [[ -n $current ]] && cp "$saved" "$current"; current=; }
trap 'restore; rm -f "$saved"' EXIT
summary=()

# break CHECK FILE WHAT OLD NEW: replace the first OLD with NEW in FILE and run CHECK.
break_one() {
    local check=$1 file=$2 what=$3 old=$4 new=$5
    cp "$file" "$saved"
    current=$file
    python3 - "$file" "$old" "$new" <<'PY' || { summary+=("NOT APPLIED  $check: $what"); restore; return; }
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if old not in text:
    sys.exit(f"{path}: '{old}' not found")
open(path, "w").write(text.replace(old, new, 1))
PY
    if bash deploy/check.sh "$check" >/dev/null 2>&1; then
        summary+=("MISSED       $check: $what")
    else
        summary+=("caught       $check: $what")
    fi
    restore
}

break_one configs deploy/compose/outrigger.yaml "misspelt key" "  timeout: 5s" "  timout: 5s"
break_one configs deploy/kubernetes/common/outrigger.yaml "duration without unit" "interval: 5s" "interval: 5"
break_one dockerfile deploy/Dockerfile "deprecated MAINTAINER" "WORKDIR /src" "MAINTAINER someone
WORKDIR /src"
break_one image deploy/Dockerfile "runs as root" "USER 65532:65532
# 8080" "# 8080"
break_one image deploy/Dockerfile "bad entrypoint arguments" 'ENTRYPOINT ["/usr/local/bin/outrigger"]' 'ENTRYPOINT ["/usr/local/bin/outrigger", "--upstream", "ftp://x"]'
break_one kubernetes deploy/kubernetes/deployment.yaml "misspelt field" "allowPrivilegeEscalation: false" "allowPrivilegeEscalaton: false"
break_one kubernetes deploy/kubernetes/common/service.yaml "port not a number" "port: 80" "port: eighty"
break_one kubernetes deploy/kubernetes/common/service.yaml "Service targets the app's port" "targetPort: 8080" "targetPort: 3000"
break_one kubernetes deploy/kubernetes/podmonitor.yaml "PodMonitor names no declared port" "port: admin" "port: metrics"
break_one kubernetes deploy/kubernetes/podmonitor.yaml "PodMonitor without the release label" "    release: kube-prometheus-stack
" ""
break_one kubernetes deploy/kubernetes/common/kustomization.yaml "ConfigMap without a content hash" "configMapGenerator:" "generatorOptions:
  disableNameSuffixHash: true
configMapGenerator:"
break_one rollout deploy/kubernetes/deployment.yaml "app's preStop does not ask outrigger to drain" "curl -s -m 2 -o /dev/null -X POST http://127.0.0.1:9901/shutdown" "sleep 5"
break_one kubernetes deploy/kubernetes/kustomization.yaml "missing resource" "  - deployment.yaml" "  - deployments.yaml"
break_one compose deploy/compose/compose.yaml "misspelt key" "    environment:" "    enviroment:"
break_one compose deploy/compose/outrigger.yaml "upstream host that is not a service" "http://legacy:3000" "http://legacy-app:3000"
break_one compose deploy/compose/compose.yaml "mounted file moved" "../grafana/outrigger.json" "../grafana/dashboard.json"
break_one prometheus deploy/prometheus/alerts.yml "threshold changed" "> 0.05" "> 0.5"
break_one prometheus deploy/prometheus/alerts.yml "threshold nudged" "> 0.05" "> 0.09"
break_one prometheus deploy/prometheus/alerts.yml "budget threshold changed" "  > 0.1
" "  > 0.9
"
break_one prometheus deploy/prometheus/alerts.yml "4xx counted as errors" 'code=~"5.."' 'code=~"[45].."'
break_one prometheus deploy/prometheus/alerts.yml "no minimum request rate" "[5m])) > 1)" "[5m])) > 0)"
break_one prometheus deploy/prometheus/alerts.yml "PromQL that does not parse" "outrigger_circuit_state > 0" "outrigger_circuit_state >"
break_one prometheus deploy/prometheus/kubernetes-scrape.yml "unknown relabel action" "action: keep" "action: keepp"
break_one live deploy/grafana/outrigger.json "metric name typo" "outrigger_retries_skipped_total" "outrigger_retry_skipped_total"
break_one live deploy/grafana/outrigger.json "label value that never occurs" 'result=\"success\"' 'result=\"succeeded\"'
break_one live deploy/prometheus/alerts.yml "rule Prometheus cannot load" "rate(outrigger_requests_total{code" "rate(outrigger_requests_total[5m]{code"

report=$(printf '%s\n' "${summary[@]}")
echo "$report"
! grep -qv '^caught' <<<"$report"
