#!/usr/bin/env bash
# Installs the Debian packages strata's demo and tests use, when missing.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v crun >/dev/null || need+=(crun)
command -v buildah >/dev/null || need+=(buildah)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v setfattr >/dev/null || need+=(attr)
command -v curl >/dev/null || need+=(curl)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "no /dev/fuse on this machine: FUSE mounts cannot work" >&2; exit 1; }
modprobe overlay 2>/dev/null || true
