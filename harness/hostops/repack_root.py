"""Pack the running root filesystem into an uncompressed newc initramfs (runs ON the host, stdlib only).

Used when the host runs from its initramfs (no root disk, as in the harness's own guests): the new
kernel then boots with the same root tree, including its SSH host key, authorized keys, the modules
just installed and the install record. Other mounts (/proc, /sys, /dev, /run, /tmp) are kept as empty
directories; ``/dev/console`` is added so the kernel can open a console before /init runs.

The archive holds everything the root can read (``/etc/shadow``, SSH host keys, ...): it is written
with mode 0600 from its first byte, and only ever into a root-only directory.

Usage: python3 - [--root=DIR] OUTPUT [EXCLUDED_PATH ...]   (--root, default /, is for tests)
"""

import os
import stat
import sys

MAGIC = b"070701"


class Writer:
    def __init__(self, out):
        self.out = out
        self.ino = 0

    def header(self, name, mode, size, nlink=1, rdev=(0, 0), mtime=0):
        self.ino += 1
        encoded = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        head = MAGIC + b"".join(b"%08X" % value for value in fields)
        self.out.write(head + encoded + b"\0" * (-(len(head) + len(encoded)) % 4))

    def data(self, blob, size):
        self.out.write(blob)
        self.out.write(b"\0" * (-size % 4))

    def add(self, name, path, st):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self.header(name, mode, 0, nlink=2, mtime=int(st.st_mtime))
        elif stat.S_ISLNK(mode):
            target = os.readlink(path).encode("utf-8", "surrogateescape")
            self.header(name, mode, len(target), mtime=int(st.st_mtime))
            self.data(target, len(target))
        elif stat.S_ISREG(mode):
            with open(path, "rb") as handle:
                blob = handle.read()
            self.header(name, mode, len(blob), mtime=int(st.st_mtime))
            self.data(blob, len(blob))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self.header(name, mode, 0, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))

    def trailer(self):
        self.ino = -1
        self.header("TRAILER!!!", 0, 0)


def walk(writer, root, excluded):
    root_dev = os.lstat(root).st_dev
    seen_console = False
    stack = [""]
    while stack:
        rel = stack.pop()
        directory = os.path.join(root, rel)
        for entry in sorted(os.listdir(directory), reverse=True):
            path = os.path.join(directory, entry)
            name = (rel + "/" + entry) if rel else entry
            if path in excluded:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                continue
            writer.add(name, path, st)
            if name == "dev/console":
                seen_console = True
            if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
                stack.append(name)
    return seen_console


def main(argv):
    args = argv[1:]
    root = "/"
    if args and args[0].startswith("--root="):
        root = os.path.abspath(args.pop(0)[len("--root="):])
    output = args[0]
    excluded = set(os.path.join(root, os.path.abspath(p).lstrip("/")) for p in args[1:])
    excluded.add(os.path.abspath(output))
    tmp = output + ".part"
    excluded.add(os.path.abspath(tmp))
    os.umask(0o077)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # a leftover .part keeps its old mode otherwise
    with os.fdopen(fd, "wb") as out:
        writer = Writer(out)
        if not walk(writer, root, excluded):
            writer.header("dev/console", stat.S_IFCHR | 0o600, 0, rdev=(5, 1))
        writer.trailer()
    os.rename(tmp, output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
