#!/usr/bin/env python
"""Expose this environment's PyTorch to another virtual environment without installing it twice.

Run with the Python of the environment that HAS torch. Fills ``LINK_DIR`` with symbolic links to the
files of torch, torchvision and their requirements (recursively: sympy, triton, the CUDA
libraries, ...), which the other environment puts on its path with a ``.pth`` file
(``scripts/setup.sh``, ``TORCH_FROM=...``). That environment's own site-packages comes first on
``sys.path``, so what it installs itself (Detectron2, numpy, Pillow, ...) takes precedence.

numpy and Pillow are not shared: they are what differs between Detectron2 v0.6 (numpy 1.x,
Pillow < 10, see constraints.txt) and Detectron2 main, so the other environment installs its own.
Build tools (pip, setuptools, wheel) are not shared either.

Usage: ``python tools/detectron2/share_torch.py LINK_DIR``
"""
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = ("torch", "torchvision")
NOT_SHARED = {"numpy", "pillow", "pip", "setuptools", "wheel"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS) -> list:
    """The installed distributions ``roots`` need, themselves included, less ``NOT_SHARED``."""
    seen, found = set(), {}
    todo = [(_canonical(r), "") for r in roots]  # (distribution, extra requested of it)
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name in NOT_SHARED:
            continue
        seen.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(_canonical(req.name), e) for e in ("", *req.extras)]
    return list(found.values())


def link(link_dir: Path) -> int:
    """Replace ``link_dir`` by links to the top-level entries of the closure's files."""
    if link_dir.exists():
        shutil.rmtree(link_dir)
    link_dir.mkdir(parents=True)
    n = 0
    for dist in closure():
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src, dst = site / top, link_dir / top
            if src.exists() and not dst.exists() and top != "__pycache__":
                dst.symlink_to(src)
                n += 1
    if not (link_dir / "torch").exists():
        sys.exit(f"torch is not installed in {sys.prefix}: nothing to share")
    return n


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"{link(Path(sys.argv[1]))} entries linked")
