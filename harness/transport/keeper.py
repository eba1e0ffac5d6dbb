"""Runs ON a remote host (stdlib only, Python 3.6+, sent as ``python3 -c``): ties remote work to the SSH channel.

The harness writes a heartbeat line to the program's stdin every few seconds.  Stdin reaching EOF
(the harness closed the channel, or its connection went away) or staying silent for LIMIT seconds
(a dead link) ends what the program holds.

``session TOKEN LIMIT``
    First reaps this user's stale sessions (see :func:`reap_stale`), then creates the session's
    private directory (``mkdtemp``: mode 0700, owner and type checked with ``lstat``) under
    ``$TMPDIR`` or ``/tmp``, records itself in it (``keeper``: pid, start time, token), and prints
    ``KVMH-SESSION <dir>``.  At the end it SIGKILLs every process whose environment holds
    ``KVMH_SESSION=TOKEN`` and removes the directory.
``watch LIMIT GRACE -- ARGV...``
    Runs ARGV (a QEMU) in its own session from the current directory, which must be a private one,
    with its output in ``qemu.log`` (created, never followed through a symlink) and its pid in
    ``child``; prints ``KVMH-CHILD <pid>``.  At the end it sends SIGTERM to the child's process
    group, SIGKILL after GRACE seconds; it exits with the child's status when the child exits.
    The group is only signalled while the child is unreaped, so its pid cannot have been reused.
"""

import os
import select
import shutil
import signal
import stat
import sys
import tempfile
import time

SESSION_ENV = "KVMH_SESSION"
PREFIX = "kvmh."


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop("signal %d" % signum)


def start_time(pid):
    """The start time of ``pid`` (clock ticks since boot) or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def private_dir(path):
    """True when ``path`` is a real directory owned by this user with mode 0700."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def write_new(path, text):
    """Create ``path`` (never an existing file, never through a symlink) with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def read_fields(path):
    """The words of a small file this program wrote, or [] (a symlink is never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return []
    with os.fdopen(fd) as handle:
        return handle.read(256).split()


def has_env(pid, entry):
    try:
        with open("/proc/%s/environ" % pid, "rb") as handle:
            return entry in handle.read().split(b"\0")
    except OSError:
        return False


def session_pids(token):
    """Processes (other than this one) carrying ``KVMH_SESSION=token`` in their environment."""
    entry = ("%s=%s" % (SESSION_ENV, token)).encode()
    me = os.getpid()
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) != me and has_env(name, entry)]


def kill_session(token):
    """Stop, then SIGKILL, every process of the session until none is left (at most 10 rounds)."""
    for _ in range(10):
        pids = session_pids(token)
        if not pids:
            return True
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(0.1)
    return not session_pids(token)


def reap_stale(base):
    """Remove this user's session directories under ``base`` whose keeper is gone.

    Only private directories (owner, mode 0700) are read.  A process recorded in a stale session's
    ``nested.*/child`` file is killed only while it is the same process (same start time) and
    carries that session's token.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        if not name.startswith(PREFIX) or not private_dir(path):
            continue
        keeper = read_fields(os.path.join(path, "keeper"))
        if len(keeper) != 3 or not keeper[0].isdigit():
            continue
        if start_time(int(keeper[0])) == int(keeper[1]):
            continue  # its keeper still runs: another harness session
        entry = ("%s=%s" % (SESSION_ENV, keeper[2])).encode()
        for sub in os.listdir(path):
            child = read_fields(os.path.join(path, sub, "child"))
            if private_dir(os.path.join(path, sub)) and len(child) == 2 and child[0].isdigit():
                pid = int(child[0])
                if start_time(pid) == int(child[1]) and has_env(pid, entry):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        shutil.rmtree(path, ignore_errors=True)


def wait_input(limit, done=None):
    """Wait until stdin ends, stays silent for ``limit`` s, or ``done()``; return why."""
    last = time.monotonic()
    while True:
        if done is not None and done():
            return "done"
        ready = select.select([0], [], [], 0.5)[0]
        now = time.monotonic()
        if ready:
            if not os.read(0, 4096):
                return "closed"
            last = now
        elif now - last > limit:
            return "silent"


def say(text):
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError:  # the channel is gone
        pass


def session(token, limit):
    base = os.environ.get("TMPDIR") or "/tmp"
    reap_stale(base)
    path = tempfile.mkdtemp(prefix=PREFIX, dir=base)
    if not private_dir(path):
        say("KVMH-ERROR %s is not a private directory" % path)
        return 1
    write_new(os.path.join(path, "keeper"), "%d %d %s\n" % (os.getpid(), start_time(os.getpid()), token))
    say("KVMH-SESSION %s" % path)
    reason = "signal"
    try:
        reason = wait_input(limit)
    except _Stop:
        pass
    finally:
        kill_session(token)
        if private_dir(path):
            shutil.rmtree(path, ignore_errors=True)
    say("KVMH-SESSION-END %s" % reason)
    return 0


def exited(pid):
    """True once ``pid`` (our child) has exited; it stays unreaped (a zombie) until :func:`reap`."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def reap(pid):
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def signal_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def watch(limit, grace, argv):
    if not private_dir("."):
        say("KVMH-ERROR the current directory is not private")
        return 1
    log_fd = os.open("qemu.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    ready_r, ready_w = os.pipe()  # closed on exec: the child's group exists once it reads EOF
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.setsid()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        try:
            os.execvp(argv[0], argv)
        except OSError as err:
            os.write(2, ("cannot run %s: %s\n" % (argv[0], err)).encode())
        os._exit(127)
    os.close(log_fd)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    write_new("child", "%d %d\n" % (pid, start_time(pid)))
    say("KVMH-CHILD %d" % pid)
    reason = "signal"
    try:
        reason = wait_input(limit, lambda: exited(pid))
    except _Stop:
        pass
    if reason != "done":
        signal_group(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while not exited(pid) and time.monotonic() < end:
            time.sleep(0.05)
    signal_group(pid, signal.SIGKILL)  # whatever is left of the group; the leader is not reaped yet
    status = reap(pid)
    say("KVMH-CHILD-EXIT %d %s" % (status, reason))
    return status


def main(argv):
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if len(argv) == 4 and argv[1] == "session":
        return session(argv[2], float(argv[3]))
    if len(argv) > 5 and argv[1] == "watch" and argv[4] == "--":
        return watch(float(argv[2]), float(argv[3]), argv[5:])
    say("KVMH-ERROR usage: session TOKEN LIMIT | watch LIMIT GRACE -- ARGV...")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
