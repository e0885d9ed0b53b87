#!/usr/bin/env python
"""Build a ``detectron2`` wheel from the pb1-detectron2 v0.6 source archive.

The archive's own ``setup.py`` cannot be used: it compiles ``detectron2/layers/csrc``, which the
archive leaves out. This script builds the same Python packages with plain setuptools instead, and:

* puts our PyTorch implementation of the compiled ops (``d2infra/ops/detectron2_c.py``) into the
  wheel as ``detectron2/_C.py``, so ``from detectron2 import _C`` works whatever is imported first;
* includes ``detectron2/model_zoo/configs`` (yaml and lazy ``.py`` configs), which the archive's
  ``setup.py`` leaves out of its wheel;
* installs the archive's ``projects/PointRend/point_rend``, ``projects/DeepLab/deeplab`` and
  ``projects/Panoptic-DeepLab/panoptic_deeplab`` as ``detectron2.projects.point_rend``,
  ``.deeplab`` and ``.panoptic_deeplab``, as upstream's wheel does (its ``setup.py``'s
  ``PROJECTS``); the archive's ``setup.py`` leaves them out.

Detectron2's own files are not edited; version pins in ``constraints.txt`` cover the rest.

Usage: ``python tools/detectron2/build_wheel.py ARCHIVE OPS_FILE OUT_DIR``
"""
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Runtime requirements of v0.6 (its setup.py's install_requires), less the formatters and caffe2 tools.
INSTALL_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

# The projects upstream's wheel installs under detectron2.projects (its setup.py's PROJECTS):
# package name -> source folder in the archive.
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

SETUP_PY = """
from setuptools import find_packages, setup
setup(
    name="detectron2",
    version="0.6",
    description="Detectron2 v0.6 (pb1-detectron2 source) with PyTorch implementations of its C++ ops",
    packages=find_packages(include=["detectron2", "detectron2.*"]) + {projects!r},
    package_dir={package_dir!r},
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.7",
    install_requires={requires!r},
)
"""


def build(archive: Path, ops_file: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp)
        (src,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        pkg = src / "detectron2"
        if (pkg / "layers" / "csrc").exists() or list(pkg.glob("_C*.so")):
            sys.exit(f"{archive} ships compiled-op sources; build it with its own setup.py instead")
        if not list((pkg / "model_zoo" / "configs").rglob("*.yaml")):
            sys.exit(f"{archive} has no detectron2/model_zoo/configs/*.yaml")
        missing = [d for d in PROJECTS.values() if not (src / d / "__init__.py").is_file()]
        if missing:
            sys.exit(f"{archive} lacks the sources of {missing}, which Detectron2's wheel ships")
        shutil.copyfile(ops_file, pkg / "_C.py")
        (src / "setup.py").write_text(SETUP_PY.format(
            requires=INSTALL_REQUIRES, projects=list(PROJECTS), package_dir=PROJECTS))
        for stale in ("pyproject.toml", "setup.cfg"):
            (src / stale).unlink(missing_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(out_dir), str(src)],
            check=True,
        )
    (wheel,) = out_dir.glob("detectron2-0.6-*.whl")
    return wheel


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(build(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
