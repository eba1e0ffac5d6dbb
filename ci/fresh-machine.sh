#!/usr/bin/env bash
# Clean-room check: run the README's first command, literally, on a pristine Debian root with an empty
# harness cache, as a new user would on a machine that has never seen this project.
#
#   bash ci/fresh-machine.sh [SUITE]        SUITE: bookworm (default) or trixie
#
# The root comes from mmdebstrap (only the base tarball is cached, for a week); a clean clone of HEAD is
# copied into it; the command runs in a private mount namespace (unshare -m) with /dev (so /dev/kvm),
# /proc and /sys bound in, and nothing stays mounted afterwards. Needs root. Exits non-zero on any failure.
set -euo pipefail
SUITE=${1:-bookworm}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE_CACHE=${KVMH_FRESH_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvm-harness-fresh}
INCLUDE=python3,python3-pip,python3-venv,git,ca-certificates,sudo
t0=$SECONDS
stage() { printf '[fresh-machine %5ss] %s\n' "$((SECONDS - t0))" "$*"; }
declare -A WALL

if [ "$(id -u)" -ne 0 ]; then
  echo "ci/fresh-machine.sh: needs root (mmdebstrap, unshare -m, chroot); run it with sudo" >&2
  exit 2
fi
for tool in mmdebstrap unshare chroot git; do
  command -v "$tool" >/dev/null || { echo "ci/fresh-machine.sh: $tool not found; apt-get install mmdebstrap util-linux git" >&2; exit 2; }
done

# ---- the pristine root: cached base tarball, unpacked afresh every time
mkdir -p "$BASE_CACHE"
chmod 0700 "$BASE_CACHE"
TARBALL="$BASE_CACHE/$SUITE-${INCLUDE//,/_}.tar"
started=$SECONDS
if [ ! -s "$TARBALL" ] || [ -n "$(find "$TARBALL" -mtime +7 2>/dev/null)" ]; then
  stage "mmdebstrap $SUITE (base tarball cached in $BASE_CACHE)"
  mmdebstrap --quiet --format=tar --variant=apt --include="$INCLUDE" "$SUITE" "$TARBALL.part"
  mv "$TARBALL.part" "$TARBALL"
fi
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kvmh-fresh.XXXXXX")
ROOT="$WORK/root"
cleanup() {
  if grep -E '^setup: .*(could not be fetched|is not available here)' "$LOG"; then
  echo "ci/fresh-machine.sh: setup left out a tool the project's tests need (above)" >&2
  [ "$status" -ne 0 ] || status=2
fi
if grep -q " $ROOT" /proc/mounts; then
    echo "ci/fresh-machine.sh: mounts left under $ROOT:" >&2
    grep " $ROOT" /proc/mounts >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
mkdir -p "$ROOT"
tar -xf "$TARBALL" -C "$ROOT"
WALL[root]=$((SECONDS - started))

# ---- a clean clone of HEAD (committed work only), as a user would have it
git clone --quiet --no-local "$REPO" "$ROOT/work/kvm-harness"
git -C "$ROOT/work/kvm-harness" checkout --quiet "$(git -C "$REPO" rev-parse HEAD)"

# ---- this network's plumbing, not the project's: the host's resolver, CA bundle, pip and apt settings.
# (pip here must trust the registry's certificate; apt settings such as Check-Valid-Until live in conf.d.)
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
[ -f /etc/ssl/certs/ca-certificates.crt ] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
  "$ROOT/usr/local/share/host-ca/ca-certificates.crt"
HOST_CA_ENV=()  # npm's cafile setting, for the npm tarball setup fetches, when pip is given the host's CA too
[ -f /etc/ssl/certs/ca-certificates.crt ] && HOST_CA_ENV=(NPM_CONFIG_CAFILE=/usr/local/share/host-ca/ca-certificates.crt)
if [ -f /etc/pip.conf ]; then
  sed 's#/etc/ssl/certs/ca-certificates.crt#/usr/local/share/host-ca/ca-certificates.crt#' /etc/pip.conf > "$ROOT/etc/pip.conf"
fi
for conf in /etc/apt/apt.conf.d/99*; do [ -f "$conf" ] && cp "$conf" "$ROOT/etc/apt/apt.conf.d/"; done

# ---- the README's first command, literally
FIRST=$(awk '/^```(sh|bash|console)?$/{inb=!inb; next} inb && NF {sub(/^\$ /,""); print; exit}' "$REPO/README.md")
[ -n "$FIRST" ] || { echo "ci/fresh-machine.sh: no command found in README.md" >&2; exit 2; }
stage "in a pristine $SUITE root, from /work/kvm-harness: $FIRST"
LOG="$WORK/first-command.log"
set +e
unshare -m --propagation private bash -euc '
  root=$1; shift
  mount --rbind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  first=$1; shift
  exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" \
    bash -c "cd /work/kvm-harness && $first"
' fresh "$ROOT" "$FIRST" "${HOST_CA_ENV[@]}" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
if grep -E '^setup: .*(could not be fetched|is not available here)' "$LOG"; then
  echo "ci/fresh-machine.sh: setup left out a tool the project's tests need (above)" >&2
  [ "$status" -ne 0 ] || status=2
fi
if grep -q " $ROOT" /proc/mounts; then
  echo "ci/fresh-machine.sh: mounts were left behind under $ROOT" >&2
  status=2
fi

# ---- stage wall times (setup from ci/setup.sh's own stamps, the rest from the main job's timeline)
WALL[setup]=$(sed -n 's/^\[setup *\([0-9]*\)s\] kvm-harness set up.*/\1/p' "$LOG" | tail -n 1)
echo
echo "== clean-room check on Debian $SUITE: stage wall times"
printf '  %-22s %6s s\n' "root (mmdebstrap/untar)" "${WALL[root]}" "setup (ci/setup.sh)" "${WALL[setup]:-?}"
sed -n 's/^kvmh: stage \(.*\)/  \1/p' "$LOG"
echo "== main job summary"
sed -n '/=* kvm-harness summary =*/,/^artifacts: /p' "$LOG"
grep -E '^=+ .*(passed|skipped|failed|error).* in [0-9.]+s' "$LOG" | tail -n 1 || true
echo "== README's first command exited $status on a pristine Debian $SUITE root ($((SECONDS - t0)) s in all)"
exit "$status"
