"""``kvmh ci emit lava`` and ``kvmh ci lava-cases``: the same run as a LAVA job per target, and its results in LAVA.

LAVA (the lab scheduler behind KernelCI and LKFT) reaches the machine under test, an s390x LPAR or z/VM guest,
over SSH: a device with a *primary SSH connection* (``deploy: to: ssh`` copies LAVA's overlay onto the
machine, ``boot: method: ssh`` logs in). The job's inline test definition clones the harness, runs
``bash ci/setup.sh``, then ``kvmh run --target TARGET`` (or ``kvmh nightly`` with a tree) on that machine and
reports every JUnit test case to LAVA with ``kvmh ci lava-cases``, which calls LAVA's ``lava-test-case``.

One job per line of the targets file (see ``ci_emit``); the runner labels of a line become the job's device
tags, except the GitHub-only ``self-hosted`` and hosted-image labels. The YAML is written here (the project
does not depend on PyYAML): block mappings and sequences, every string value double-quoted (JSON strings are
YAML double-quoted scalars).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import EXIT_OK, InfrastructureError, UsageError
from ..results.junit_read import ERROR, FAIL, PASS, SKIP, XFAIL, read_junit
from .ci_emit import HOSTED, JobTarget, emit_main, read_targets, write_or_print

LAVA_REPO_PLACEHOLDER = "https://git.example.org/kvm-harness.git"
"""Where the LAVA device clones the harness from: a placeholder, set the real URL with ``--lava-repo``."""
DEFAULT_DEVICE_TYPE = "s390x-lpar"
"""The LAVA device type of the job (``--lava-device-type``): the lab defines it, LAVA ships none for s390x."""
LAVA_OS = "debian"
"""The OS LAVA's overlay scripts assume on the device; ``ci/setup.sh`` needs Debian or Ubuntu."""
LOGIN_PROMPTS = ("root@[^:]+:.*#",)
"""What ``boot: method: ssh`` waits for after logging in: a root shell prompt (LAVA logs in as root)."""
DEFINITION_PATH = "inline/kvmh.yaml"
JUNIT = "junit.xml"

JOB_TIMEOUT = {"hours": 6}
ACTION_TIMEOUT = {"minutes": 15}
CONNECTION_TIMEOUT = {"minutes": 10}
DEPLOY_TIMEOUT = {"minutes": 10}
BOOT_TIMEOUT = {"minutes": 5}
TEST_TIMEOUT = {"minutes": 330}
"""The test action (setup, build, boot, every suite) gets what the 6 h job leaves after deploy and boot."""

CASE_NAME_MAX = 100
"""LAVA stores a test case name of at most 100 characters."""
_CASE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
"""LAVA's ``lava-test-case`` signal splits on blanks and ``=``, and the name becomes a directory: keep
letters, digits, ``.``, ``_`` and ``-`` (the charset LAVA's schema allows for test definition names)."""
_LABELS_NOT_TAGS = {"self-hosted", HOSTED}
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


# --- the job definitions -------------------------------------------------------------------------------------


def _shell_param(name: str, value: str) -> str:
    """LAVA writes each test definition parameter as ``NAME='value'`` into the test shell: refuse what breaks it."""
    if "'" in value or "\n" in value or not value.strip():
        raise UsageError(f"{name} {value!r} cannot be passed to a LAVA test shell (empty, a quote or a newline): "
                         "pass a plain URL or target spec")
    return value


def device_tags(target: JobTarget) -> list[str]:
    """The LAVA device tags of a target: its runner labels without the GitHub-only ones."""
    return [label for label in target.runner if label not in _LABELS_NOT_TAGS]


def run_steps(nightly_tree: Optional[str]) -> list[str]:
    """The test shell's steps (LAVA runs them in one script under ``set -e``, from the definition's directory)."""
    if nightly_tree:
        run = ["kvmh nightly --tree \"$KVMH_TREE\" --target \"$KVMH_TARGET\" --history kvmh-history"
               " && KVMH_RC=0 || KVMH_RC=$?"]
        collect = [f"cp \"$(ls -d kvmh-history/*/\"$KVMH_SLUG\"/junit.xml | tail -n 1)\" {JUNIT}"]
    else:
        run = [f"kvmh run --target \"$KVMH_TARGET\" --junitxml {JUNIT} && KVMH_RC=0 || KVMH_RC=$?"]
        collect = []
    return [
        "rm -rf kvm-harness",
        "git clone --depth 1 \"$KVMH_REPO\" kvm-harness",
        "cd kvm-harness",
        "bash ci/setup.sh",
        "export PATH=\"$PWD/.venv/bin:$PATH\"",
        *run,
        "if [ \"$KVMH_RC\" -eq 0 ]; then lava-test-case kvmh-exit-status --result pass;"
        " else lava-test-case kvmh-exit-status --result fail; fi",
        *collect,
        f"kvmh ci lava-cases {JUNIT}",
    ]


def lava_job(target: JobTarget, nightly_tree: Optional[str] = None, *, repo_url: str = LAVA_REPO_PLACEHOLDER,
             device_type: str = DEFAULT_DEVICE_TYPE) -> dict[str, Any]:
    """The LAVA job definition (as data) that runs kvmh on one target."""
    what = "kvmh nightly" if nightly_tree else "kvmh run"
    params = {"KVMH_REPO": _shell_param("--lava-repo", repo_url),
              "KVMH_TARGET": _shell_param("target", target.target), "KVMH_SLUG": target.slug}
    metadata: dict[str, Any] = {"kvmh.command": what, "kvmh.target": target.target}
    if nightly_tree:
        params["KVMH_TREE"] = _shell_param("--nightly-tree", nightly_tree)
        metadata["kvmh.nightly-tree"] = nightly_tree
    job: dict[str, Any] = {
        "job_name": f"{what} --target {target.target}",
        "device_type": device_type,
        "priority": "medium",
        "visibility": "public",
        "timeouts": {"job": JOB_TIMEOUT, "action": ACTION_TIMEOUT, "connection": CONNECTION_TIMEOUT},
        "metadata": metadata,
    }
    tags = device_tags(target)
    if tags:
        job["tags"] = tags
    definition = {
        "metadata": {
            "format": "Lava-Test Test Definition 1.0",
            "name": f"kvmh-{target.slug}",
            "description": f"{what} on {target.target}, every JUnit test case reported as a LAVA test case",
            "os": [LAVA_OS],
            "scope": ["functional"],
        },
        "params": params,
        "run": {"steps": run_steps(nightly_tree)},
    }
    job["actions"] = [
        {"deploy": {"to": "ssh", "os": LAVA_OS, "timeout": DEPLOY_TIMEOUT}},
        {"boot": {"method": "ssh", "connection": "ssh", "prompts": list(LOGIN_PROMPTS), "timeout": BOOT_TIMEOUT}},
        {"test": {"timeout": TEST_TIMEOUT, "definitions": [
            {"from": "inline", "name": f"kvmh-{target.slug}", "path": DEFINITION_PATH, "repository": definition},
        ]}},
    ]
    return job


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS else json.dumps(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value == {} or value == []:
        return json.dumps(value)
    raise TypeError(f"no YAML scalar for {value!r}")


def yaml_lines(value: Any, pad: str = "") -> list[str]:
    """Block-style YAML of nested dicts and lists of strings, ints and bools."""
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{_key(key)}:", *yaml_lines(item, pad + "  ")]
            else:
                lines.append(f"{pad}{_key(key)}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = yaml_lines(item, pad + "  ")
                lines += [f"{pad}- {inner[0][len(pad) + 2:]}", *inner[1:]]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))
    return lines


def _header(what: str, repo_url: str) -> list[str]:
    lines = [f"# Generated by kvmh ci emit lava: {what}.",
             "# The device (an s390x LPAR or z/VM guest with a primary SSH connection) clones the harness from",
             f"# KVMH_REPO = {repo_url}."]
    if repo_url == LAVA_REPO_PLACEHOLDER:
        lines.append("# That URL is a placeholder: emit again with --lava-repo URL before submitting.")
    return lines + ["# LAVA takes one job a file: kvmh ci emit lava --out-dir DIR; lavacli jobs submit DIR/*.yaml."]


def lava_jobs(targets_file: Path, nightly_tree: Optional[str] = None, *, repo_url: str = LAVA_REPO_PLACEHOLDER,
              device_type: str = DEFAULT_DEVICE_TYPE) -> list[tuple[str, dict[str, Any]]]:
    """(slug, job definition) for every target of the targets file."""
    if not re.fullmatch(r"[^\s'\"]{1,200}", device_type):
        raise UsageError(f"--lava-device-type {device_type!r} is not a LAVA device type name: pass one word")
    return [(t.slug, lava_job(t, nightly_tree, repo_url=repo_url, device_type=device_type))
            for t in read_targets(targets_file)]


def emit_lava(targets_file: Path, nightly_tree: Optional[str] = None, *, repo_url: str = LAVA_REPO_PLACEHOLDER,
              device_type: str = DEFAULT_DEVICE_TYPE) -> str:
    """One multi-document YAML: a LAVA job per target, each after ``---``."""
    lines = _header("one LAVA job per target of the targets file, each after ---", repo_url)
    for _, job in lava_jobs(targets_file, nightly_tree, repo_url=repo_url, device_type=device_type):
        lines += ["---", *yaml_lines(job)]
    return "\n".join(lines) + "\n"


def write_lava_dir(out_dir: Path, targets_file: Path, nightly_tree: Optional[str] = None, *,
                   repo_url: str = LAVA_REPO_PLACEHOLDER, device_type: str = DEFAULT_DEVICE_TYPE) -> list[Path]:
    """One job file ``<slug>.yaml`` per target in ``out_dir`` (lavacli submits one job a file)."""
    jobs = lava_jobs(targets_file, nightly_tree, repo_url=repo_url, device_type=device_type)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for slug, job in jobs:
        path = out_dir / f"{slug}.yaml"
        header = _header(f"the LAVA job for {job['metadata']['kvmh.target']}", repo_url)
        path.write_text("\n".join([*header, *yaml_lines(job)]) + "\n")
        written.append(path)
    return written


# --- kvmh ci lava-cases ---------------------------------------------------------------------------------------

_LAVA_RESULT = {PASS: "pass", FAIL: "fail", ERROR: "fail", SKIP: "skip", XFAIL: "skip"}


@dataclass(frozen=True)
class LavaCase:
    name: str
    result: str

    def command(self, executable: str = "lava-test-case") -> list[str]:
        return [executable, self.name, "--result", self.result]


def case_name(test_id: str) -> str:
    """A LAVA test case name for a JUnit test id: allowed characters only, at most 100 of them."""
    name = _CASE_UNSAFE.sub("_", test_id.replace("::", ".")).strip("._-") or "case"
    if len(name) > CASE_NAME_MAX:
        digest = hashlib.sha1(test_id.encode()).hexdigest()[:8]
        name = f"{name[:CASE_NAME_MAX - 9].rstrip('._-')}-{digest}"
    return name


def lava_cases(files: Sequence[Path]) -> list[LavaCase]:
    """Every test case of the JUnit files with a unique LAVA name and pass/fail/skip (an error is a fail)."""
    out: list[LavaCase] = []
    taken: set[str] = set()
    for path in files:
        for case in read_junit(path).cases.values():
            base = name = case_name(case.id)
            number = 1
            while name in taken:
                number += 1
                suffix = f"-{number}"
                name = base[:CASE_NAME_MAX - len(suffix)] + suffix
            taken.add(name)
            out.append(LavaCase(name, _LAVA_RESULT[case.outcome]))
    return out


def report_lava_cases(files: Sequence[Path], print_only: bool = False) -> int:
    """Call ``lava-test-case`` once per test case; print the calls instead with ``print_only``."""
    cases = lava_cases(files)
    executable = None if print_only else shutil.which("lava-test-case")
    if executable is None:
        for case in cases:
            print(shlex.join(case.command()), flush=True)
        if print_only:
            return EXIT_OK
        raise InfrastructureError(f"lava-test-case is not on PATH (this is not a LAVA test shell): the {len(cases)} "
                                  "calls above were not made; pass --print to only list them")
    failed = []
    for case in cases:
        # lava-test-case writes LAVA's signal to standard output, where LAVA reads it: never capture it
        if subprocess.run(case.command(executable), check=False).returncode != 0:
            failed.append(case.name)
    if failed:
        raise InfrastructureError(f"lava-test-case failed for {len(failed)} of {len(cases)} test cases "
                                  f"(first: {failed[0]}); see its output above")
    counts = {r: sum(c.result == r for c in cases) for r in ("pass", "fail", "skip")}
    print(f"kvmh ci lava-cases: reported {len(cases)} test cases to LAVA "
          f"({counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip)", flush=True)
    return EXIT_OK


# --- command line ---------------------------------------------------------------------------------------------


def add_lava_parsers(ci_actions: argparse._SubParsersAction) -> None:
    """Add the LAVA options to ``kvmh ci emit`` and the ``kvmh ci lava-cases`` action."""
    pe = ci_actions.choices["emit"]
    lava = pe.add_argument_group("lava", "options of kvmh ci emit lava")
    lava.add_argument("--lava-repo", metavar="URL",
                      help=f"git URL the LAVA device clones the harness from (default: the placeholder "
                           f"{LAVA_REPO_PLACEHOLDER}, which you must replace)")
    lava.add_argument("--lava-device-type", metavar="NAME",
                      help=f"LAVA device type of the jobs (default {DEFAULT_DEVICE_TYPE})")
    lava.add_argument("--out-dir", type=Path, metavar="DIR",
                      help="write one job file DIR/<target>.yaml per target instead of one multi-document YAML")
    pe.set_defaults(func=emit_with_lava_main)
    pc = ci_actions.add_parser("lava-cases", help="inside a LAVA test shell: report each JUnit test case to LAVA "
                                                  "with lava-test-case")
    pc.add_argument("--print", dest="print_only", action="store_true",
                    help="print the lava-test-case calls instead of making them")
    pc.add_argument("files", type=Path, nargs="+", metavar="JUNIT")
    pc.set_defaults(func=lava_cases_main)


def emit_with_lava_main(args: argparse.Namespace) -> int:
    lava_only = [flag for flag, value in (("--lava-repo", args.lava_repo), ("--out-dir", args.out_dir),
                                          ("--lava-device-type", args.lava_device_type)) if value is not None]
    if args.engine != "lava":
        if lava_only:
            raise UsageError(f"{lava_only[0]} is an option of kvmh ci emit lava, not of {args.engine}")
        return emit_main(args)
    options = {"repo_url": args.lava_repo or LAVA_REPO_PLACEHOLDER,
               "device_type": args.lava_device_type or DEFAULT_DEVICE_TYPE}
    if args.out_dir is not None:
        if args.output is not None:
            raise UsageError("pass --output FILE (one multi-document YAML) or --out-dir DIR (a file per job), not both")
        written = write_lava_dir(args.out_dir, args.targets, args.nightly_tree, **options)
        print(f"kvmh ci emit lava: {len(written)} job files in {args.out_dir}")
        return EXIT_OK
    write_or_print(emit_lava(args.targets, args.nightly_tree, **options), args.output)
    return EXIT_OK


def lava_cases_main(args: argparse.Namespace) -> int:
    return report_lava_cases(args.files, print_only=args.print_only)
