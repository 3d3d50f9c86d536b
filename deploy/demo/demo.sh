#!/usr/bin/env bash
# Try the orchestrator without GPUs: a busybox stand-in for the AI stack on simulated GPUs.
#   deploy/demo/demo.sh up     build the image, install a simulated CDI spec, start the stack
#   deploy/demo/demo.sh down   stop the stack and remove the CDI spec
# Then, in another terminal:  GPUPLANE_COMPOSE_FILES=deploy/demo/docker-compose.yml make up
# Needs podman, runc (where crun fails: export CONTAINERS_CONF=deploy/demo/containers.conf for both),
# busybox-static and root (for /etc/cdi). Uses the fleet GPUPLANE_FLEET or deploy/fleets/reference.yaml.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV_BIN=.venv/bin
COMPOSE=(podman-compose -f deploy/demo/docker-compose.yml)
command -v podman-compose >/dev/null || COMPOSE=("$VENV_BIN/podman-compose" -f deploy/demo/docker-compose.yml)
SPEC=/etc/cdi/gpuplane-simulated.yaml
IMAGE=localhost/gpuplane-busybox:demo

case "${1:-up}" in
up)
    for tool in podman busybox; do
        command -v "$tool" >/dev/null || { echo "demo: $tool is missing (apt-get install podman runc busybox-static)" >&2; exit 1; }
    done
    if ! podman image exists "$IMAGE"; then
        root=$(mktemp -d)
        mkdir -p "$root/bin"
        cp "$(command -v busybox)" "$root/bin/busybox"
        for applet in sh sleep date echo cat env printenv true false test; do ln -s busybox "$root/bin/$applet"; done
        tar -C "$root" -cf "$root.tar" .
        podman import --quiet "$root.tar" "$IMAGE" >/dev/null
        rm -rf "$root" "$root.tar"
        echo "demo: built $IMAGE"
    fi
    mkdir -p /etc/cdi
    "$VENV_BIN/gpuplane" cdi-spec --fleet "${GPUPLANE_FLEET:-deploy/fleets/reference.yaml}" --output "$SPEC"
    "${COMPOSE[@]}" up -d >/dev/null
    podman ps --filter label=com.docker.compose.project=aistack --format '{{.Names}}  {{.Status}}'
    echo "demo: now run  GPUPLANE_COMPOSE_FILES=deploy/demo/docker-compose.yml make up"
    ;;
down)
    "${COMPOSE[@]}" down >/dev/null 2>&1 || true
    rm -f "$SPEC"
    echo "demo: stopped; removed $SPEC"
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
