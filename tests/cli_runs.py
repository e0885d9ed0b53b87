"""train_net.py and demo.py in the tests: as a fresh process (the command line end to end), or their
``main`` in this process with the arguments the command line would parse (the same code without
an interpreter start-up, which costs several seconds of CPU with Detectron2 on this machine); and
the README's sections and code blocks that tests run as written."""
import contextlib
import io
import logging
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The embedded Mask R-CNN on the mini splits, batch 2, no loader workers.
MASK_RCNN = "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml"
SMALL = ["DATASETS.TRAIN", '("shapes_mini_train",)', "DATASETS.TEST", '("shapes_mini_val",)',
         "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "1"]


def readme_section(heading: str) -> str:
    """The text of README.md under the line ``heading`` (e.g. ``"## Train on your own data"``), up
    to the next ``## `` heading."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert heading + "\n" in text, f"README.md has no heading {heading!r}"
    return text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def readme_code_block(heading: str, lang: str) -> str:
    """The first ```<lang> block of README.md under ``heading`` (:func:`readme_section`)."""
    m = re.search(rf"^```{re.escape(lang)}\n(.*?)^```", readme_section(heading), re.M | re.S)
    assert m, f"no ```{lang} block under {heading!r}"
    return m.group(1)


def run_script(datasets_dir, script: str, *args: str,
               check: bool = True) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository, with the datasets under ``datasets_dir``
    (and this process's environment: one torch thread, conftest.py)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_dir))
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


@contextlib.contextmanager
def detectron2_log(datasets_dir):
    """With ``$DETECTRON2_DATASETS`` set to ``datasets_dir``, yields a stream that receives what
    the ``detectron2`` logger writes; afterwards the logger has its handlers of before again
    (Detectron2's ``default_setup`` adds a console and a file handler for each new OUTPUT_DIR)."""
    logger = logging.getLogger("detectron2")
    before, level = list(logger.handlers), logger.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # as default_setup's setup_logger (cached: once per OUTPUT_DIR)
    old_env = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(datasets_dir)
    try:
        yield stream
    finally:
        if old_env is None:
            del os.environ["DETECTRON2_DATASETS"]
        else:
            os.environ["DETECTRON2_DATASETS"] = old_env
        for h in list(logger.handlers):
            if h not in before:
                logger.removeHandler(h)
        logger.setLevel(level)


def train_net_main(datasets_dir, *argv: str) -> str:
    """``train_net.main`` of the command line ``train_net.py <argv>`` (one process) in this
    process; returns what it logged. Its exceptions propagate (the command would exit with
    them)."""
    import train_net

    args = train_net.default_argument_parser().parse_args(list(argv))
    with detectron2_log(datasets_dir) as log:
        train_net.main(args)
    return log.getvalue()
