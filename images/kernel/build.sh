#!/usr/bin/env bash
# Builds the Ignis guest kernel (an uncompressed vmlinux with a PVH entry
# point, bootable by QEMU -M microvm and by Firecracker) from Debian's
# linux-source-6.1 and images/kernel/microvm.config.
#
# Idempotent: the result is cached under a hash of the config, this script and
# the kernel source package version, so a second run does nothing.
#
# Usage: images/kernel/build.sh OUT_DIR [CACHE_DIR]
#   OUT_DIR/vmlinux and OUT_DIR/kernel.json are (re)linked to the cached build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT_DIR [CACHE_DIR]}
cache=${2:-${IGNIS_HOME:-/var/lib/ignis}/cache}
src_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$src_tar" ] || { echo "kernel: $src_tar is missing (apt-get install linux-source-6.1)" >&2; exit 1; }

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { cat "$here/microvm.config" "$here/build.sh"; echo "$src_version"; } | sha256sum | cut -c1-16)
build="$cache/kernel/$key"
mkdir -p "$out"

if [ ! -f "$build/vmlinux" ]; then
    echo "kernel: building $key from linux-source $src_version (a few minutes)" >&2
    tree="$cache/kernel/src-$src_version"
    if [ ! -f "$tree/.ignis-extracted" ]; then
        rm -rf "$tree" && mkdir -p "$tree"
        tar -xf "$src_tar" -C "$tree" --strip-components=1
        touch "$tree/.ignis-extracted"
    fi
    obj="$cache/kernel/obj-$key"
    rm -rf "$obj" && mkdir -p "$obj"
    make -s -C "$tree" O="$obj" tinyconfig >/dev/null
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$here/microvm.config" >/dev/null
    make -s -C "$tree" O="$obj" olddefconfig >/dev/null
    # Every option the fragment asks for must have survived olddefconfig.
    missing=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qx "$line" "$obj/.config" || { echo "kernel: $line did not take" >&2; missing=1; } ;;
            "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
                ! grep -q "^$opt=" "$obj/.config" || { echo "kernel: $opt should be off" >&2; missing=1; } ;;
        esac
    done < "$here/microvm.config"
    [ "$missing" = 0 ] || exit 1
    make -s -C "$tree" O="$obj" -j"$(nproc)" vmlinux
    mkdir -p "$build.tmp"
    cp "$obj/vmlinux" "$obj/.config" "$build.tmp/"
    strip --strip-debug "$build.tmp/vmlinux" 2>/dev/null || true
    rm -rf "$build" && mv "$build.tmp" "$build"
    rm -rf "$obj"
fi

ln -sfn "$build/vmlinux" "$out/vmlinux.tmp" && mv -T "$out/vmlinux.tmp" "$out/vmlinux"
printf '{"key":"%s","source_version":"%s"}\n' "$key" "$src_version" > "$out/kernel.json.tmp"
mv "$out/kernel.json.tmp" "$out/kernel.json"
echo "kernel: $out/vmlinux ($key)" >&2
