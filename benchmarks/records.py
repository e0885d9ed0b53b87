"""The suite's records: what a finished piece measured, in a committed file, so that the suite can
be resumed from a fresh clone (the work dir with the checkpoints is not committed: it stays on the
machine where it was written).

Layout under ``benchmarks/results/runs/<suite>/`` (``--quick``: ``<work>/records/``):

* ``<run>.json``: one training (model, seed, BASE_LR, schedule): its metrics, the merged config
  and its digest, the digest of the batches it was fed, the command, machine, date and commit.
* ``speed-<pair>.json``: the pair's speed, with the runs (and config digests) whose weights it
  timed.
* ``ablation-<name>/<value>.json``: one eval-only ablation value, with the run it evaluated.

A record whose merged config no longer matches what the suite would train (a config file or a
default changed) is stale: it is moved to ``stale/`` and the run is trained again.
"""
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["write_json", "read_json", "machine_description", "git_head", "config_dict",
           "config_digest", "config_changes", "set_aside", "commit_files"]


def write_json(path: str, data) -> None:
    """Atomically (tmp file + rename), strict JSON (NaN written as null)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_strict(data), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _strict(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def read_json_or_none(path: str):
    return read_json(path) if os.path.isfile(path) else None


def machine_description() -> str:
    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    return (f"{platform.machine()} {cpu}".strip() + f", {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}")


def git_head() -> Optional[str]:
    """The repository's HEAD commit (None outside a git clone)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def config_dict(cfg) -> dict:
    """A merged Detectron2 config as plain data, OUTPUT_DIR aside (a moved work dir: same run)."""
    import yaml

    d = yaml.safe_load(cfg.dump())
    d.pop("OUTPUT_DIR", None)
    return d


def config_digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Keys that say where a run trained, not what: not compared (train_net sets "cpu" without CUDA).
_WHERE_NOT_WHAT = ("MODEL.DEVICE",)


def config_changes(saved: dict, now: dict, limit: int = 5) -> List[str]:
    """"KEY: old -> new" for up to ``limit`` keys whose value differs between the config a run
    was trained with (``saved``) and the one the suite would train now; empty when none does.

    Only keys present in both count: a key added since (a new option of some project, every
    config gets every project's keys) keeps the old behaviour by its default, by this
    repository's rule. A change that a default cannot show (code) is retrained with ``--rerun``.
    Lists and tuples compare equal (yaml vs json round trips); MODEL.DEVICE is not compared."""
    old, new = _flat(saved), _flat(now)
    for k in _WHERE_NOT_WHAT:
        old.pop(k, None)

    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    keys = sorted(k for k in set(old) & set(new) if norm(old[k]) != norm(new[k]))
    return [f"{k}: {old[k]} -> {new[k]}" for k in keys[:limit]]


def set_aside(path: str) -> str:
    """Moves a record (file or directory) to ``stale/`` beside it; returns the new path."""
    stale = os.path.join(os.path.dirname(path), "stale")
    os.makedirs(stale, exist_ok=True)
    dest = os.path.join(stale, f"{os.path.basename(path)}.{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.replace(path, dest)
    return dest


def commit_files(paths: Sequence[str], message: str, attempts: int = 20) -> None:
    """``git add`` and ``git commit -- paths``: only these files, whatever else the tree holds.
    Waits while another process holds the index lock."""
    paths = [os.path.relpath(p, REPO) for p in paths]
    for cmd in (["git", "add", "--", *paths], ["git", "commit", "-q", "-m", message, "--",
                                                      *paths]):
        for _ in range(attempts):
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if proc.returncode == 0 or "index.lock" not in proc.stderr:
                break
            time.sleep(3)
        if proc.returncode != 0 and "nothing" not in proc.stdout + proc.stderr:
            print(f"[records] could not commit {paths}: {proc.stderr.strip()[-300:]}", flush=True)
            return
