#!/usr/bin/env bash
# make demo: build an image from files on this machine, push it to a local
# registry, convert it to eStargz, mount it lazily, and run a program from it;
# then a build step: mount it writable, run a command in it, commit the
# change as a new image, push it, and mount the result; then the same as a
# Dockerfile with strata build.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

bash test/install-deps.sh
say "building strata"
mkdir -p bin
go build -o bin/strata ./cmd/strata
go build -o bin/mkimage ./test/demo/mkimage

work=$(mktemp -d /tmp/strata-demo.XXXXXX)
export STRATA_ROOT=$work/root STRATA_SOCKET=$work/strata.sock
mnt=$work/mnt rw=$work/rw next=$work/next
mkdir -p "$mnt" "$rw" "$next" "$work/registry"
regpid=""
cleanup() {
  [ -f "$STRATA_ROOT/daemon.log" ] && cp "$STRATA_ROOT/daemon.log" /tmp/strata-demo-daemon.log
  set +e
  for d in "$next" "$mnt"; do mountpoint -q "$d" && bin/strata umount "$d" >/dev/null; done
  mountpoint -q "$rw" && bin/strata umount --discard "$rw" >/dev/null
  pkill -TERM -f "strata daemon --socket $STRATA_SOCKET" && sleep 1
  [ -n "$regpid" ] && kill "$regpid" 2>/dev/null && wait "$regpid" 2>/dev/null
  grep -q " $work" /proc/mounts && awk -v w="$work" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$work"
}
trap cleanup EXIT

port=5000
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: $reg}
YML
say "starting a registry on $reg"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 50); do curl -fsS "http://$reg/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

say "building a two-layer image from this machine's files (system base + Go toolchain)"
bin/mkimage --max-layer-bytes $((300 << 20)) \
  --layer /bin,/lib,/lib64,/usr/lib64,/sbin,/usr/bin,/usr/sbin,/etc,/usr/lib/x86_64-linux-gnu \
  --layer /usr/local/go \
  --push "$reg/demo:gzip"

say "converting it to eStargz"
bin/strata convert --insecure "$reg/demo:gzip" "$reg/demo:estargz"

sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
say "mounting it lazily at $mnt"
t0=$(now)
bin/strata mount --insecure "$reg/demo:estargz" "$mnt"
t1=$(now)
say "running the Go toolchain from the mount: chroot $mnt go version"
GOROOT=/usr/local/go chroot "$mnt" /usr/local/go/bin/go version
t2=$(now)

say "what was fetched"
bin/strata ls
read -r fetched size < <(bin/strata ls --json | awk -F'[:,]' '/"fetchedBytes"/ {f += $2} /"size"/ {s += $2} END {print f, s}')

say "result"
printf 'mount ready in       %ss\n' "$(secs "$t0" "$t1")"
printf 'program result in    %ss after mount started\n' "$(secs "$t0" "$t2")"
printf 'bytes fetched        %d of %d (%s%% of the image)\n' "$fetched" "$size" "$(awk -v f="$fetched" -v s="$size" 'BEGIN { printf "%.1f", 100 * f / s }')"

bin/strata umount "$mnt"

say "a build step: the same image mounted writable at $rw"
t3=$(now)
bin/strata mount --rw --insecure "$reg/demo:estargz" "$rw"
say "strata run $rw -- go version, then a step that writes files: go mod init in /work"
goenv=(--env PATH=/usr/local/go/bin:/usr/bin:/bin --env GOROOT=/usr/local/go --env HOME=/tmp --env GOTOOLCHAIN=local)
bin/strata run "${goenv[@]}" "$rw" -- go version
bin/strata run "${goenv[@]}" --workdir /work "$rw" -- go mod init example.com/demo
say "what the step changed (strata diff)"
bin/strata diff "$rw"
say "committing the change as $reg/demo:step and pushing it (the base layers are not downloaded)"
bin/strata commit --insecure -m 'demo step' "$rw" "$reg/demo:step"
t4=$(now)
read -r fetched2 size2 < <(bin/strata ls --json | awk -F'[:,]' '/"fetchedBytes"/ {f += $2} /"size"/ {s += $2} END {print f, s}')
bin/strata umount "$rw"

say "mounting the new image at $next"
bin/strata mount --insecure "$reg/demo:step" "$next"
cat "$next/work/go.mod"
bin/strata umount "$next"

say "build step result"
printf 'mount --rw + run + commit + push  %ss\n' "$(secs "$t3" "$t4")"
printf 'base bytes fetched for the step   %d of %d (%s%% of the image)\n' "$fetched2" "$size2" "$(awk -v f="$fetched2" -v s="$size2" 'BEGIN { printf "%.1f", 100 * f / s }')"

say "the same as a Dockerfile: strata build, each step on the lazy base, pushed without the base"
mkdir -p "$work/ctx"
# RUN in exec form: the demo image's system layer stops at 300 MiB of files,
# which may leave /bin/sh without its libraries; go is static.
cat >"$work/ctx/Dockerfile" <<DOCKERFILE
ARG BASE
FROM \$BASE
ENV PATH=/usr/local/go/bin:/usr/bin:/bin GOROOT=/usr/local/go HOME=/tmp GOTOOLCHAIN=local
WORKDIR /work
RUN ["go", "mod", "init", "example.com/built"]
COPY hello.txt .
CMD ["cat", "/work/hello.txt"]
DOCKERFILE
echo "hello from a Dockerfile" >"$work/ctx/hello.txt"
t5=$(now)
bin/strata build --insecure --build-arg BASE="$reg/demo:estargz" -t "$reg/demo:built" --push "$work/ctx"
t6=$(now)
say "the build again: every step comes from the build cache"
bin/strata build --insecure --build-arg BASE="$reg/demo:estargz" -t "$reg/demo:built" --push "$work/ctx"
t7=$(now)
bin/strata mount --insecure "$reg/demo:built" "$next"
cat "$next/work/go.mod" "$next/work/hello.txt"
bin/strata umount "$next"
printf 'strata build --push               %ss (again, cached: %ss)\n' "$(secs "$t5" "$t6")" "$(secs "$t6" "$t7")"
