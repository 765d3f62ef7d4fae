# Sourced by scripts/build-image.sh and scripts/image-test.sh: picks the container engine and
# sets ENGINE (the command: podman or docker).
#
# CAI_CONTAINER_ENGINE=podman|docker picks one; otherwise podman if it is installed, else docker
# if its daemon answers, else podman, buildah and runc are installed (Debian packages).
#
# Podman: where its defaults cannot work (no systemd as PID 1, so no systemd cgroup manager; or a
# hard open-files limit below the 1048576 its default ulimits ask for) and CONTAINERS_CONF is
# not set, a private containers.conf is written to target/image/containers.conf (cgroupfs, runc,
# the caller's ulimits) and exported as CONTAINERS_CONF. Set CONTAINERS_CONF to use your own.
# shellcheck shell=bash

install_podman() {
    echo "image: installing podman, buildah and runc (Debian packages)" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc; }; } >&2
}

ENGINE="${CAI_CONTAINER_ENGINE:-}"
if [[ -z "$ENGINE" ]]; then
    if command -v podman >/dev/null; then
        ENGINE=podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        ENGINE=podman
    fi
fi
case "$ENGINE" in
podman)
    if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then install_podman; fi
    if [[ -z "${CONTAINERS_CONF:-}" ]] && { [[ ! -d /run/systemd/system ]] || (($(ulimit -Hn) < 1048576)); }; then
        mkdir -p target/image
        cat >target/image/containers.conf <<'EOF'
# Written by scripts/image-engine.sh: podman on a machine without systemd or with a low open-files limit.
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
        CONTAINERS_CONF="$PWD/target/image/containers.conf"
        export CONTAINERS_CONF
    fi
    ;;
docker)
    if ! docker info >/dev/null 2>&1; then
        echo "image: docker is installed but its daemon does not answer (docker info); use podman: CAI_CONTAINER_ENGINE=podman" >&2
        exit 1
    fi
    ;;
*)
    echo "image: CAI_CONTAINER_ENGINE=$ENGINE: podman or docker" >&2
    exit 2
    ;;
esac
