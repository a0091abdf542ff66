#!/usr/bin/env bash
# Builds a local stand-in for the Dockerfile's PYTHON_IMAGE from Debian
# packages, for machines that cannot pull the registry's python image:
# a bookworm minbase root file system with python3, python3-venv and the
# host's CA bundle, imported into podman.
#
#   tests/image/make-base.sh [IMAGE]        (default localhost/jupiterd-base:bookworm)
#
# Then build the image offline from the registry's point of view:
#
#   podman build --isolation=chroot --network host --format docker \
#       --build-arg PYTHON_IMAGE=localhost/jupiterd-base:bookworm -t jupiterd .
#
# The Debian mirror is the one this host's apt uses (JUPITERD_DEBIAN_MIRROR
# overrides it). Needs root, podman and debootstrap.
set -euo pipefail

image=${1:-localhost/jupiterd-base:bookworm}
suite=${JUPITERD_DEBIAN_SUITE:-bookworm}

mirror=${JUPITERD_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # deb822 sources first, then the one-line format; the first plain Debian
    # archive (not the security one) wins.
    mirror=$(
        { grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
          grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
        } | grep -E '/debian/?$' | head -n 1
    )
fi
if [ -z "$mirror" ]; then
    echo "make-base: no Debian mirror found in /etc/apt; set JUPITERD_DEBIAN_MIRROR" >&2
    exit 2
fi
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || { echo "make-base: $tool is not installed" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "make-base: debootstrap $suite (minbase + python3) from the host's mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    exit 1
}
# pip inside the build verifies TLS against this bundle; the registry's
# python image calls its interpreter `python`.
cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/ca-certificates.crt"
ln -sf python3 "$work/root/usr/bin/python"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
echo "make-base: importing as $image" >&2
tar -C "$work/root" -c . | podman import --quiet - "$image" >/dev/null
echo "$image"
