# /etc/profile of the kvm-harness guest (busybox sh login shells).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export PS1='kvmh# '
export LANG=C.UTF-8
cd "$HOME" 2>/dev/null || true
