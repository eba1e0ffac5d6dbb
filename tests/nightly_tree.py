"""A local git repository standing in for linux-next, and headless Chromium for the history report.

Shared by the nightly integration tests: ``commit_night`` commits one night's tree and tags it
``next-YYYYMMDD``; ``render_in_chromium`` loads a page in Debian's Chromium and returns its DOM after
rendering and the size of a screenshot.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest


class Dom(HTMLParser):
    """The rendered DOM: rows of each table's body and the classes of its cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.rows: dict[str, int] = {}
        self.classes: dict[str, list[str]] = {}
        self._table = ""
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id") or ""
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1
        elif tag == "td" and self._in_body:
            self.classes.setdefault(self._table, []).append(attrs.get("class") or "")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False

    def find_all_rows(self, table: str) -> int:
        return self.rows.get(table, 0)

    def count_class(self, table: str, cls: str) -> int:
        return self.classes.get(table, []).count(cls)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render_in_chromium(page: Path, tmp: Path) -> tuple[Dom, tuple[int, int]]:
    """Load ``page`` in headless Chromium: its DOM after rendering, and the size of a screenshot of it."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: bash ci/setup.sh installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    common = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,1000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<table" in dom.stdout, dom.stderr[-2000:]
    shot = tmp / "report.png"
    proc = subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return Dom(dom.stdout), (width, height)


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def kvmh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def commit_night(repo: Path, night: str, test_source: str, answer: str, flip: str, splat: str | None) -> str:
    """Commit one night's tree (tests, their data, the splat marker) and tag it next-YYYYMMDD."""
    tests = repo / "kvmtests"
    tests.mkdir(exist_ok=True)
    (tests / "test_tree.py").write_text(test_source)
    (tests / "answer").write_text(answer + "\n")
    (tests / "flip").write_text(flip + "\n")
    if splat:
        (tests / "splat").write_text(splat + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"night {night}")
    git(repo, "tag", "next-" + night.replace("-", ""))
    return git(repo, "rev-parse", "HEAD")
