"""Every relative link and anchor in the repository's Markdown files resolves, as GitHub renders them.

A link ``[text](target)`` (or an image, or a reference definition ``[name]: target``) outside code
is checked when its target has no URL scheme: the file or directory must exist (relative to the
Markdown file; a leading ``/`` is the repository root), and an anchor ``#heading`` must be the
GitHub anchor of a heading of the target Markdown file (or of the file itself for ``#heading``
alone). GitHub's anchor of a heading: its text as rendered (code marks, emphasis marks and link
targets dropped), lower-cased, every character that is not a letter, digit, ``_``, ``-`` or space
removed, spaces replaced by ``-``; the second heading with the same anchor gets ``-1``, the third
``-2``.
"""
import os
import re
import subprocess
import sys
import urllib.parse
from typing import Dict, List, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", ".venv-main", ".cache", "datasets", "output", "node_modules"}

_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> List[str]:
    """The repository's Markdown files: those git tracks (and new ones it does not ignore), or,
    outside a git checkout, every ``*.md`` under the repository but the environments'."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "-z", "--", "*.md"], cwd=REPO, capture_output=True, check=True)
        files = [f for f in out.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for root, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            files += [os.path.relpath(os.path.join(root, n), REPO) for n in names
                      if n.endswith(".md")]
    return sorted(f for f in set(files) if os.path.isfile(os.path.join(REPO, f)))


def prose_lines(text: str) -> List[Tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks, inline code removed."""
    lines, fence = [], None
    for i, line in enumerate(text.split("\n"), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if m and m.group(1).startswith(fence):
                fence = None
            continue
        lines.append((i, _INLINE_CODE.sub(lambda c: "\0" * len(c.group(0)), line)))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading's Markdown text (before de-duplication)."""
    text = re.sub(r"(`+)(.+?)\1", r"\2", heading)                 # code marks
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)         # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)                             # inline HTML tags
    text = re.sub(r"(\*+)(\S(?:.*?\S)?)\1", r"\2", text)           # *emphasis*, **strong**
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str, _cache: Dict[str, set] = {}) -> set:
    """The anchors GitHub gives the headings (and ``<a name/id>`` tags) of Markdown file ``path``."""
    if path not in _cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        seen: Dict[str, int] = {}
        found = set()
        raw = text.split("\n")
        for i, line in prose_lines(text):
            found.update(_HTML_ID.findall(line))
            m = _ATX.match(raw[i - 1]) if _ATX.match(line) else None
            if m is None and i < len(raw) and raw[i - 1].strip() and \
                    re.match(r"^\s{0,3}(=+|-+)\s*$", raw[i]) and not raw[i - 1].startswith(("-", "|", "*")):
                heading = raw[i - 1]  # setext heading
            elif m is not None:
                heading = m.group(2)
            else:
                continue
            base = github_anchor(heading)
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        _cache[path] = found
    return _cache[path]


def links(text: str) -> List[Tuple[int, str]]:
    """(line number, target) of every link, image and reference definition outside code."""
    out = []
    for i, line in prose_lines(text):
        out += [(i, m.group(2)) for m in _LINK.finditer(line)]
        m = _REF_DEF.match(line)
        if m:
            out.append((i, m.group(1)))
    return out


def broken_links(md_file: str) -> List[str]:
    """What is wrong with the relative links of ``md_file`` (relative to the repository)."""
    path = os.path.join(REPO, md_file)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    problems = []
    for line, target in links(text):
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue
        ref, _, anchor = target.partition("#")
        ref = urllib.parse.unquote(ref)
        if not ref:
            dest = path
        elif ref.startswith("/"):
            dest = os.path.join(REPO, ref.lstrip("/"))
        else:
            dest = os.path.normpath(os.path.join(os.path.dirname(path), ref))
        where = f"{md_file}:{line}: {target}"
        if not os.path.abspath(dest).startswith(REPO + os.sep):
            problems.append(f"{where}: outside the repository")
        elif not os.path.exists(dest):
            problems.append(f"{where}: {os.path.relpath(dest, REPO)} does not exist")
        elif anchor:
            anchor = urllib.parse.unquote(anchor)
            if dest.endswith(".md") and os.path.isfile(dest):
                if anchor not in anchors(dest):
                    problems.append(f"{where}: no heading with anchor #{anchor} in "
                                    f"{os.path.relpath(dest, REPO)}")
            elif not re.fullmatch(r"L\d+(-L\d+)?", anchor):
                problems.append(f"{where}: anchor #{anchor} into a file that is not Markdown")
    return problems


@pytest.mark.parametrize("heading, anchor", [
    # hand-derived from GitHub's rule (module docstring)
    ("Reading the results so far", "reading-the-results-so-far"),
    ("Installation: the route and why", "installation-the-route-and-why"),
    ("`run.py`: every method beside its Detectron2 baseline",
     "runpy-every-method-beside-its-detectron2-baseline"),
    ("Mask R-CNN, Cascade Mask R-CNN and R^3-CNN (headline), 1500 iterations, BASE_LR 0.01",
     "mask-r-cnn-cascade-mask-r-cnn-and-r3-cnn-headline-1500-iterations-base_lr-001"),
    ("IoU-aware RetinaNet confidence exponent alpha (IoU-aware Table 3; -1: p * IoU)",
     "iou-aware-retinanet-confidence-exponent-alpha-iou-aware-table-3--1-p--iou"),
    ("**Bold** and [a link](x.md) × 2", "bold-and-a-link--2"),
])
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


def test_anchor_checker_finds_broken_links(tmp_path, monkeypatch):
    """The checker on a hand-made tree: duplicate headings, code blocks and every kind of miss."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Title\n\n## Results\n\n## Results\n\n```\n## Not a heading\n[x](missing.md)\n```\n"
        "See [r](#results-1), [t](#title), [b](b.md#two-words), [i](img.png), `[c](nope.md)`.\n"
        "Bad: [1](#results-2), [2](b.md#nope), [3](gone.md), [4](img.png#x), [5](../../out.md)\n"
        "[web](https://example.com/#whatever) [mail](mailto:a@b.c)\n")
    (tmp_path / "docs" / "b.md").write_text("Two words\n=========\n")
    (tmp_path / "docs" / "img.png").write_bytes(b"")
    problems = broken_links("docs/a.md")
    assert [p.split(": ")[1] for p in problems] == [
        "#results-2", "b.md#nope", "gone.md", "img.png#x", "../../out.md"], problems


def test_every_relative_link_resolves():
    files = markdown_files()
    assert "README.md" in files and "docs/RESULTS.md" in files
    problems = [p for f in files for p in broken_links(f)]
    assert not problems, "broken Markdown links:\n" + "\n".join(problems)
