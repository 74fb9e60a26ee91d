#!/usr/bin/env bash
# Tools and base image for the container-build tier (tests/test_docker_build.py, marked slow).
#
# Nothing can be pulled from a container registry here, so the base image is made locally: a minimal
# Debian (debootstrap, from the Debian mirror apt already uses) with python3 and python3-venv,
# committed with buildah (vfs storage, no daemon) and saved as an OCI archive that the tests load.
# The archive is cached: a second run costs nothing. Needs root (apt-get, debootstrap).
#
#   MOE_ENV_TEST_BASE_CACHE   where the archive lives (default ~/.cache/moe-env-test)
#   MOE_ENV_DEBIAN_SUITE      Debian release (default bookworm: Python 3.11)
#   MOE_ENV_DEBIAN_MIRROR     mirror (default: the first deb URI in apt's sources, else deb.debian.org)
set -euo pipefail

CACHE=${MOE_ENV_TEST_BASE_CACHE:-$HOME/.cache/moe-env-test}
SUITE=${MOE_ENV_DEBIAN_SUITE:-bookworm}
ARCHIVE="$CACHE/base-$SUITE.oci.tar"
IMAGE="localhost/moe-env-test-base:$SUITE"
t0=$(date +%s)
say() { echo "docker-base: $* ($(( $(date +%s) - t0 ))s)"; }

if [ "$(id -u)" != 0 ]; then
  echo "docker-base: needs root (apt-get, debootstrap); the container-build tests will skip" >&2
  exit 1
fi

need=()
for tool in buildah debootstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
say "tools: $(buildah --version)"

if [ -s "$ARCHIVE" ] && [ -s "$ARCHIVE.python" ]; then
  say "cached: $ARCHIVE (python $(cat "$ARCHIVE.python"))"
  exit 0
fi

mirror=${MOE_ENV_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
py=$(chroot "$work/rootfs" python3 -c 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2])')
say "rootfs: $(du -sh "$work/rootfs" | cut -f1), python $py"

B=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=$("${B[@]}" from scratch)
"${B[@]}" copy "$ctr" "$work/rootfs/" / >/dev/null
"${B[@]}" config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
"${B[@]}" commit --rm -q "$ctr" "$IMAGE" >/dev/null
"${B[@]}" push -q "$IMAGE" "oci-archive:$work/base.oci.tar:$IMAGE"
mv "$work/base.oci.tar" "$ARCHIVE"
echo "$py" > "$ARCHIVE.python"
say "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
