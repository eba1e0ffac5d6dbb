#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for kvm-harness: host packages and the Python package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  qemu-system-misc qemu-system-x86 qemu-user        # s390x and x86_64 guests, s390x user emulation for the ABI probe
  gcc-s390x-linux-gnu gcc make git                  # cross and native compilers
  flex bison bc libelf-dev libssl-dev rsync cpio kmod dwarves  # kernel and selftest builds
  libcap-dev libnuma-dev                            # KVM selftests
  ccache openssh-client ca-certificates
)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python3 -m pip install -q -e '.[test]'
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
echo "kvm-harness set up: $(command -v kvmh)"
