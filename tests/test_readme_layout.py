"""The README is a front door: short, and its Layout section names the tree as it is.

The Layout section's code block is a tree: one entry per line, two spaces of indent per
level, the entry's path (a folder ends with ``/``) first and its description after.
Every path it names must exist, and every package of the library and every tracked
top-level folder must be named."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250


def layout_block(text: str) -> str:
    """The first code block after the ``## Layout`` heading."""
    section = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert section, "README.md has no '## Layout' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), flags=re.M | re.S)
    assert block, "the README's Layout section has no code block"
    return block.group(1)


def layout_paths(block: str) -> list[str]:
    """Repository-relative paths the tree names, in order (folders end with ``/``)."""
    paths: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, folder path) of the open folders
    for number, line in enumerate(block.splitlines(), 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"Layout line {number} is not indented by levels of 2: {line!r}"
        while parents and parents[-1][0] >= indent:
            parents.pop()
        assert indent == 2 * len(parents), (
            f"Layout line {number} is indented deeper than its folder: {line!r}")
        name = line.split()[0]
        path = (parents[-1][1] if parents else "") + name
        paths.append(path)
        if name.endswith("/"):
            parents.append((indent, path))
    return paths


def named(paths: list[str]) -> set[str]:
    """Every named path and every folder above one (``.ci/run`` names ``.ci/``)."""
    out = set(paths)
    for path in paths:
        parts = path.rstrip("/").split("/")
        out.update("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
    return out


def tracked_top_level_folders() -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked folders are unknown")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    return {f.split("/", 1)[0] + "/" for f in files if "/" in f}


def library_packages() -> set[str]:
    return {init.parent.relative_to(ROOT).as_posix() + "/"
            for init in (ROOT / "imambig").rglob("__init__.py")}


def test_the_parser_reads_a_tree() -> None:
    block = ("a/                 folder\n"
             "  b.py             file\n"
             "  c/               folder\n"
             "    d.py           file\n"
             "e/f.txt            a file under e/\n")
    paths = layout_paths(block)
    assert paths == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e/f.txt"]
    assert named(paths) == {"a/", "a/b.py", "a/c/", "a/c/d.py", "e/", "e/f.txt"}


def test_readme_is_at_most_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, (
        f"README.md has {lines} lines, at most {MAX_LINES}: move details to docs/")


def test_every_path_the_layout_names_exists() -> None:
    paths = layout_paths(layout_block(README.read_text(encoding="utf-8")))
    assert paths, "the README's Layout block names nothing"
    missing = []
    for path in paths:
        target = ROOT / path.rstrip("/")
        if path.endswith("/") and not target.is_dir():
            missing.append(f"{path} (no such folder)")
        elif not path.endswith("/") and not target.is_file():
            missing.append(f"{path} (no such file)")
    assert not missing, "the README's Layout names paths that are not in the repository: " + (
        ", ".join(missing))


def test_the_layout_names_every_library_package() -> None:
    paths = named(layout_paths(layout_block(README.read_text(encoding="utf-8"))))
    unnamed = sorted(library_packages() - paths)
    assert not unnamed, ("packages under imambig/ that the README's Layout does not name: "
                         + ", ".join(unnamed))


def test_the_layout_names_every_tracked_top_level_folder() -> None:
    paths = named(layout_paths(layout_block(README.read_text(encoding="utf-8"))))
    unnamed = sorted(tracked_top_level_folders() - paths)
    assert not unnamed, ("tracked top-level folders that the README's Layout does not "
                         "name: " + ", ".join(unnamed))
