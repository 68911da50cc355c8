# Shared by the deploy check scripts (source it): podman as this machine can run it, a free
# loopback port, and waiting for an HTTP status.

# crun, podman's default runtime, refuses this machine's hybrid cgroup layout; runc works.
podman=(podman --runtime runc)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# status_is CODE URL: whether a GET of URL answers CODE.
status_is() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$2") == "$1" ]]; }

# wait_for WHAT COMMAND...: retries COMMAND for up to 20 s; says what it waited for and
# returns 1 if it never succeeded.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 100); do
        if "$@"; then return 0; fi
        sleep 0.2
    done
    echo "FAIL: timed out waiting for $what"
    return 1
}
