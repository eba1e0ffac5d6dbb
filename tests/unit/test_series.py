"""Patch series input: mbox files, directories of .patch files, git ranges, message-ids."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.errors import EXIT_INFRA
from harness.kernel import series as S
from harness.kernel.series import KernelInputError, load_series, split_mbox


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.org",
                           *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small git repository with three commits on top of a base tag."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "a.c").write_text("one\ntwo\nthree\n")
    git(r, "add", "a.c")
    git(r, "commit", "-qm", "base")
    git(r, "tag", "base")
    for i, subject in enumerate(("first: change two", "second: add b.c", "third: change three")):
        if i == 1:
            (r / "b.c").write_text("new\n")
            git(r, "add", "b.c")
        else:
            text = (r / "a.c").read_text().replace("two" if i == 0 else "three", f"CHANGED{i}")
            (r / "a.c").write_text(text)
        git(r, "commit", "-qam", subject)
    return r


def mbox_of(repo: Path, rng: str = "base..HEAD", *extra: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "format-patch", "--stdout", *extra, rng],
                          check=True, capture_output=True).stdout


def test_mbox_in_order(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.mbox"
    path.write_bytes(mbox_of(repo))
    s = load_series(path)
    assert s.subjects == ["first: change two", "second: add b.c", "third: change three"]
    assert [p.number for p in s.patches] == [1, 2, 3]
    assert all(p.author.startswith("Dev <dev@example.org>") for p in s.patches)
    assert b"diff --git a/b.c b/b.c" in s.patches[1].raw


def test_mbox_shuffled_is_ordered_by_patch_number(repo: Path, tmp_path: Path) -> None:
    messages = split_mbox(mbox_of(repo))
    assert len(messages) == 3
    path = tmp_path / "shuffled.mbox"
    path.write_bytes(messages[2] + messages[0] + messages[1])
    assert load_series(path).subjects == ["first: change two", "second: add b.c", "third: change three"]


def test_cover_letter_and_replies_are_skipped(repo: Path, tmp_path: Path) -> None:
    data = mbox_of(repo, "base..HEAD", "--cover-letter")
    assert b"[PATCH 0/3]" in data
    reply = (b"From dev Mon Sep 17 00:00:00 2001\nFrom: Reviewer <r@example.org>\n"
             b"Subject: Re: [PATCH 2/3] second: add b.c\n\nLooks good.\n> diff --git a/b.c b/b.c\n")
    path = tmp_path / "thread.mbox"
    path.write_bytes(data + reply)
    s = load_series(path)
    assert len(s) == 3
    assert s.subjects[0] == "first: change two"


def test_mbox_without_patches(tmp_path: Path) -> None:
    path = tmp_path / "empty.mbox"
    path.write_bytes(b"From x Mon Sep 17 00:00:00 2001\nFrom: a@b\nSubject: [PATCH 0/2] cover\n\nhello\n")
    with pytest.raises(KernelInputError) as exc:
        load_series(path)
    assert str(exc.value) == (f"{path} contains no patches (no mail with a diff): pass git format-patch "
                              "output or an mbox of the series")
    assert exc.value.exit_status == EXIT_INFRA
    assert "\n" not in str(exc.value)


def test_missing_patch_is_named(repo: Path, tmp_path: Path) -> None:
    messages = split_mbox(mbox_of(repo))
    path = tmp_path / "holes.mbox"
    path.write_bytes(messages[0] + messages[2])
    with pytest.raises(KernelInputError, match=r"missing patch 2/3"):
        load_series(path)


def test_two_versions_are_refused(repo: Path, tmp_path: Path) -> None:
    v1 = mbox_of(repo, "base..HEAD")
    v2 = mbox_of(repo, "base..HEAD", "-v2")
    path = tmp_path / "both.mbox"
    path.write_bytes(v1 + v2)
    with pytest.raises(KernelInputError, match=r"mixes versions v1, v2"):
        load_series(path)
    path.write_bytes(v2)
    assert [p.version for p in load_series(path).patches] == [2, 2, 2]


def test_directory_of_patches(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "patches"
    git(repo, "format-patch", "-q", "--cover-letter", "-o", str(out), "base..HEAD")
    assert (out / "0000-cover-letter.patch").exists()
    s = load_series(out)
    assert s.subjects == ["first: change two", "second: add b.c", "third: change three"]
    mbox = tmp_path / "s.mbox"
    mbox.write_bytes(mbox_of(repo))
    assert s.hash == load_series(mbox).hash


def test_directory_with_bare_diff_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001-x.patch").write_text("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(KernelInputError, match=r"0001-x.patch is a bare diff, not a mail"):
        load_series(tmp_path)


def test_git_range(repo: Path) -> None:
    s = load_series("base..HEAD", tree=repo)
    assert s.subjects == ["first: change two", "second: add b.c", "third: change three"]
    assert s.base == git(repo, "rev-parse", "base").strip()
    assert load_series("base..HEAD~1", tree=repo).subjects == ["first: change two", "second: add b.c"]


def test_git_range_errors(repo: Path) -> None:
    with pytest.raises(KernelInputError, match=r"commit 'nosuch' of range 'nosuch..HEAD' not found"):
        load_series("nosuch..HEAD", tree=repo)
    with pytest.raises(KernelInputError, match=r"holds no commits"):
        load_series("HEAD..HEAD", tree=repo)


def test_hash_follows_content_not_transport(repo: Path, tmp_path: Path) -> None:
    a = tmp_path / "a.mbox"
    a.write_bytes(mbox_of(repo))
    b = tmp_path / "b.mbox"
    b.write_bytes(mbox_of(repo).replace(b"Date: ", b"X-Seen: 1\nDate: "))
    assert load_series(a).hash == load_series(b).hash
    git(repo, "commit", "-q", "--amend", "-m", "third: change three, reworded")
    c = tmp_path / "c.mbox"
    c.write_bytes(mbox_of(repo))
    assert load_series(c).hash != load_series(a).hash
    assert load_series(c).patches[0].hash == load_series(a).patches[0].hash


def test_series_mbox_round_trips(repo: Path, tmp_path: Path) -> None:
    s = load_series("base..HEAD", tree=repo)
    path = tmp_path / "again.mbox"
    path.write_bytes(s.mbox())
    assert load_series(path).hash == s.hash


def test_message_id_without_b4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    with pytest.raises(KernelInputError) as exc:
        load_series("<20240101.1234-1-dev@example.org>")
    assert str(exc.value) == ("cannot fetch message-id 20240101.1234-1-dev@example.org: b4 not installed — "
                              "save the series as an mbox and pass the file")


def test_unknown_series_argument(tmp_path: Path) -> None:
    with pytest.raises(KernelInputError, match=r"is neither an mbox file, a directory"):
        load_series(str(tmp_path / "nothing-here"))


def test_no_series_is_empty() -> None:
    assert len(load_series(None)) == 0
    assert load_series("").subjects == []
