"""The shell protocol on a serial console: each command framed by random markers, its status after it.

The command's output comes back line by line with a ``KVMH_O_<token>:`` prefix and ends with
``KVMH_E_<token> <status>``, so prompts, echo and kernel messages printed meanwhile are told apart.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import time
from typing import Optional

from ..command import CommandResult
from ..errors import BootError, InfrastructureError
from .console import Console
from .panic import KernelPanic, is_printk
from .. import printk

log = logging.getLogger(__name__)


def run_command(console: Console, command: str, timeout: float = 60.0) -> CommandResult:
    """Run ``command`` in the console's shell; stdout and stderr come back merged in ``stdout``.

    A command that outlives ``timeout`` is interrupted with Ctrl-C and reported with
    ``timed_out=True`` and the output it printed so far. One command at a time per console.
    """
    with console.command_lock:
        return _run_locked(console, command, timeout)


def _run_locked(console: Console, command: str, timeout: float) -> CommandResult:
    token = secrets.token_hex(6)
    start = time.monotonic()
    since = console.mark()
    console.sendline(
        f"__kvmh={token}; {{ ( eval {shlex.quote(command)} ) 2>&1 </dev/null; "
        f'echo "KVMH_E_${{__kvmh}} $?"; }} | '
        f'while IFS= read -r __kvmh_l; do printf "KVMH_O_%s:%s\\n" "$__kvmh" "$__kvmh_l"; done'
    )
    end = re.compile(rf"KVMH_O_{token}:([^\n]*?)KVMH_E_{token} (\d+)\r*\n")
    try:
        match = console.wait_for(end, start + timeout, what=f"the end of console command {command!r}",
                                 since=since, panic_when=f"during console command {command!r}")
    except KernelPanic:
        raise
    except BootError:
        region = console.text_since(since)
        interrupt(console)
        return CommandResult(command=command, exit_status=-1,
                             stdout=parse_command_output(region, token, None),
                             stderr="", duration_s=time.monotonic() - start, timed_out=True)
    region = console.text_since(since, console.match_start(match))
    last = match.group(1)
    return CommandResult(
        command=command,
        exit_status=int(match.group(2)),
        stdout=parse_command_output(region, token, last),
        stderr="",
        duration_s=time.monotonic() - start,
    )


def interrupt(console: Console) -> None:
    """Ctrl-C the running command and wait until the shell answers again."""
    console.send("\x03")
    time.sleep(0.2)
    token = secrets.token_hex(6)
    console.sendline(f'__kvmh={token}; echo "KVMH_Y_${{__kvmh}}"')
    try:
        console.wait_for(re.compile(rf"KVMH_Y_{token}\r*\n"), time.monotonic() + 15,
                         what="the console shell after Ctrl-C")
    except BootError as err:
        raise InfrastructureError(
            f"the {console.name} console shell did not come back after interrupting a command: {err}"
        ) from err

def prepare_shell(console: Console, prompt: str, deadline: float) -> None:
    """Wait for the shell ``prompt`` and quiet kernel messages on the console (``dmesg -n 1``)."""
    console.wait_for(re.compile(re.escape(prompt)), deadline, what=f"the console shell prompt {prompt!r}")
    result = run_command(console, "dmesg -n 1", timeout=max(5.0, deadline - time.monotonic()))
    if not result.ok:
        log.warning("could not lower the console loglevel: %s", result.stdout.strip())


def parse_command_output(region: str, token: str, last: Optional[str]) -> str:
    """Rebuild a console command's output from the raw console text ``region``.

    Lines carrying the ``KVMH_O_<token>:`` prefix are the command's; other lines are echo, prompts
    or kernel messages.  A kernel message printed in the middle of an output line splits it: the
    rest of that line then arrives without a prefix right after the message, and is joined back.
    ``last`` is the text before the end marker on the end line (an unterminated last line), or
    None when the command did not finish.
    """
    prefix = f"KVMH_O_{token}:"
    out: list[str] = []
    split_pending = False
    for raw in region.split("\n"):
        line = raw.rstrip("\r")
        at = line.find(prefix)
        if at >= 0:
            payload = line[at + len(prefix):]
            inside = printk.INSIDE.search(payload)
            if inside and inside.start() > 0:
                # "text[  1.23] message": a kernel message cut into this output line.
                out.append(payload[:inside.start()])
                split_pending = True
            else:
                out.append(payload)
                split_pending = False
            continue
        if split_pending and line and not is_printk(line):
            out[-1] += line
        split_pending = False
    if last is not None:
        out.append(last)
    elif out:
        out.append("")
    return "\n".join(out)
