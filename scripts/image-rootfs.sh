#!/usr/bin/env bash
# The runtime layout of the cai image, defined once: fills ROOTFS with everything the image holds,
# and deploy/Dockerfile's final stage copies ROOTFS to / of a `scratch` image. Both ways of
# building the image fill it with this script: scripts/build-image.sh on the host (binary from
# the host's `cargo build --release`), and deploy/Dockerfile's build stage inside rust:1-bookworm.
#
#   scripts/image-rootfs.sh BINARY ROOTFS
#
# What goes in (what gcr.io/distroless/cc-debian12:nonroot holds, less what cai never reads):
#   /usr/local/bin/cai               the binary
#   the shared libraries `ldd` lists for it (glibc, libgcc_s, libm, ...) and the dynamic loader,
#   at the paths ldd names; nothing else: cai dlopens nothing, and glibc 2.34+ has the `files`
#   and `dns` NSS modules built in
#   /etc/ssl/certs/ca-certificates.crt  Debian's ca-certificates bundle, for amqps:// and
#                                    rediss:// and https model servers (rustls-native-certs)
#   /etc/passwd, /etc/group          root, nobody and nonroot (uid/gid 65532), as in distroless
#   /etc/nsswitch.conf               hosts: files dns
#   /cai/out, /home/nonroot, /tmp    empty directories; the Dockerfile gives /cai and
#                                    /home/nonroot to 65532 (a named volume on /cai/out takes
#                                    that owner); /tmp is 1777 but cai writes nothing there
# No shell, no package manager, no tzdata (cai logs UTC).
set -euo pipefail

if (($# != 2)); then
    echo "usage: $0 BINARY ROOTFS" >&2
    exit 2
fi
binary=$1 rootfs=$2
if [[ ! -x "$binary" ]]; then
    echo "image-rootfs: $binary is not an executable file (build it: cargo build --release --locked --bin cai)" >&2
    exit 1
fi
case "$(realpath -m "$rootfs")" in
/ | /usr | /etc | /lib* | /bin | /home | /tmp)
    echo "image-rootfs: refusing to fill $rootfs" >&2
    exit 2
    ;;
esac
certs=/etc/ssl/certs/ca-certificates.crt
if [[ ! -s "$certs" ]]; then
    echo "image-rootfs: $certs is missing (apt-get install ca-certificates)" >&2
    exit 1
fi

rm -rf "$rootfs"
mkdir -p "$rootfs"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/cai"

# Shared libraries: `ldd` prints `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` for each,
# and the loader as `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file. Each is copied
# (symlinks followed) to the path ldd names, where the loader looks for it without an
# ld.so.cache. A static binary (musl) has none.
ldd_out="$(ldd "$binary" 2>&1)" || ldd_out=""
if grep -q 'not found' <<<"$ldd_out"; then
    echo "image-rootfs: a library of $binary is missing:" >&2
    echo "$ldd_out" >&2
    exit 1
fi
libs=()
while read -r line; do
    case "$line" in
    *"=> /"*) path=${line#*=> } ;;
    /*) path=$line ;;
    *) continue ;;
    esac
    libs+=("${path%% (*}")
done <<<"$ldd_out"
for lib in "${libs[@]}"; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L --preserve=mode "$lib" "$rootfs$lib"
done

install -D -m 0644 "$certs" "$rootfs$certs"
install -d -m 0755 "$rootfs/etc"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
install -d -m 0755 "$rootfs/cai/out" "$rootfs/home/nonroot"
install -d -m 1777 "$rootfs/tmp"
# Owned by 65532 where the build may chown (the Dockerfile's build stage runs as root); the
# Dockerfile's final stage sets the owner with --chown either way.
if ((EUID == 0)); then
    chown -R 65532:65532 "$rootfs/cai" "$rootfs/home/nonroot"
fi

echo "image-rootfs: $rootfs: cai, ${#libs[@]} libraries ($(printf '%s ' "${libs[@]##*/}")), CA certificates, nonroot 65532; $(du -sh "$rootfs" | cut -f1)" >&2
