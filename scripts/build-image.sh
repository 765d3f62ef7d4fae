#!/usr/bin/env bash
# Builds the container image localhost/cai:latest and localhost/cai:VERSION with podman or docker
# (scripts/image-engine.sh picks, installing podman when neither works) on a machine that reaches
# no container registry: the binary is the host's release build (`cargo build --release --locked
# --bin cai`), scripts/image-rootfs.sh puts it with the libraries it links, CA certificates and
# /etc/passwd (nonroot, 65532) into target/image/rootfs, and deploy/Dockerfile's final stage
# turns that into a `scratch` image (the directory replaces the Dockerfile's `rootfs` stage, so
# its rust:1-bookworm build stage is skipped and nothing is pulled).
#
# Then it checks the image: user 65532:65532, entrypoint /usr/local/bin/cai, at most 120 MB, and
# `cai --version` in a read-only container without network prints what the host binary prints.
#
#   scripts/build-image.sh                    # build and check
#   CAI_IMAGE=registry.example.com/ml/cai scripts/build-image.sh   # another repository name
#
# Idempotent: a rebuild replaces the tags and removes the image they left behind if nothing else
# names it. The build itself takes seconds; the release build of cai from cold takes 10-20 min on
# 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/image-engine.sh
source scripts/image-engine.sh

# One build at a time in this checkout (two image tests at once share target/image); fd 9
# holds the lock and is closed for the commands started, so none keeps it.
mkdir -p target/image
exec 9>target/image/.lock
flock 9

IMAGE="${CAI_IMAGE:-localhost/cai}"
MAX_BYTES=$((120 * 1000 * 1000))

if [[ ! -s /etc/ssl/certs/ca-certificates.crt ]]; then
    echo "build-image: installing ca-certificates (Debian package)" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates; }; } >&2
fi

echo "build-image: cargo build --release --locked --bin cai" >&2
cargo build --release --locked --bin cai 9>&-
binary=target/release/cai
host_version="$("$binary" --version)"
version="${host_version##* }"
if [[ ! "$version" =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]]; then
    echo "build-image: cannot read a version from \`$binary --version\`: $host_version" >&2
    exit 1
fi

scripts/image-rootfs.sh "$binary" target/image/rootfs
# The main context holds nothing: everything the final stage copies comes from `rootfs`.
rm -rf target/image/context
mkdir -p target/image/context

old_id="$($ENGINE image inspect --format '{{.Id}}' "$IMAGE:latest" 2>/dev/null || true)"
build=("$ENGINE" build -f deploy/Dockerfile --build-context rootfs=target/image/rootfs
    --label "org.opencontainers.image.version=$version" -t "$IMAGE:latest" -t "$IMAGE:$version")
# Podman would keep an intermediate image per COPY of each build; the build is a few copies.
[[ "$ENGINE" == podman ]] && build+=(--layers=false)
echo "build-image: ${build[*]} target/image/context" >&2
"${build[@]}" target/image/context >&2 9>&-
new_id="$($ENGINE image inspect --format '{{.Id}}' "$IMAGE:latest")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]] &&
    [[ "$($ENGINE image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null || echo 1)" == 0 ]]; then
    $ENGINE rmi "$old_id" >/dev/null 2>&1 || true
fi

# The checks of the image itself.
fail() {
    echo "build-image: FAIL $*" >&2
    exit 1
}
user="$($ENGINE image inspect --format '{{.Config.User}}' "$IMAGE:latest")"
entrypoint="$($ENGINE image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE:latest")"
size="$($ENGINE image inspect --format '{{.Size}}' "$IMAGE:latest")"
[[ "$user" == 65532:65532 ]] || fail "the image's user is '$user', not 65532:65532"
[[ "$entrypoint" == '["/usr/local/bin/cai"]' ]] || fail "the image's entrypoint is $entrypoint"
((size <= MAX_BYTES)) || fail "the image is $size bytes, more than $MAX_BYTES"
run=("$ENGINE" run --rm --read-only --network none)
# Podman mounts tmpfs on /tmp, /var/tmp and /run of a --read-only container unless told not to.
[[ "$ENGINE" == podman ]] && run+=(--read-only-tmpfs=false)
image_version="$("${run[@]}" "$IMAGE:latest" --version 9>&-)" || fail "\`cai --version\` does not run in the image"
[[ "$image_version" == "$host_version" ]] || fail "the image says '$image_version', the host build '$host_version'"

echo "build-image: built $IMAGE:latest and $IMAGE:$version with $ENGINE (image ${new_id:0:12})"
echo "build-image: size $size bytes ($((size / 1000000)) MB, limit 120 MB); binary $(stat -c %s "$binary") bytes"
echo "build-image: user $user, entrypoint $entrypoint, workdir $($ENGINE image inspect --format '{{.Config.WorkingDir}}' "$IMAGE:latest")"
echo "build-image: --version in a read-only container: '$image_version'; host build: '$host_version'"
