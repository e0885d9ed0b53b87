"""A misspelled config key, in a config file or in the command-line opts, is an error that names
the key and suggests the closest existing keys (d2infra/config.py, through train_net.build_cfg)."""
import pytest

from d2infra.config import UnknownConfigKeyError
from train_net import build_cfg

CONFIG = "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml"


@pytest.fixture
def misspelled_yaml(tmp_path, repo_root):
    path = tmp_path / "my_r3cnn.yaml"
    path.write_text(f'_BASE_: "{repo_root}/{CONFIG}"\nMODEL:\n  R3CNN:\n    NUM_LOOP: 2\n')
    return path


def test_misspelled_key_in_a_config_file(misspelled_yaml, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(UnknownConfigKeyError) as e:
        build_cfg(str(misspelled_yaml), [])
    assert str(e.value) == (
        f"{misspelled_yaml}: unknown config key MODEL.R3CNN.NUM_LOOP; did you mean "
        "MODEL.R3CNN.NUM_LOOPS_TEST or MODEL.R3CNN.NUM_LOOPS_TRAIN?")
    # Still what yacs raised before, for callers that catch it.
    assert isinstance(e.value, KeyError)


def test_misspelled_node_in_a_config_file(tmp_path, repo_root, monkeypatch):
    """yacs names the first level that does not exist: here the node ROI_HEAD."""
    monkeypatch.chdir(repo_root)
    path = tmp_path / "c.yaml"
    path.write_text(f'_BASE_: "{repo_root}/{CONFIG}"\nMODEL:\n  ROI_HEAD:\n    NUM_CLASSES: 1\n')
    with pytest.raises(UnknownConfigKeyError, match=r"unknown config key MODEL\.ROI_HEAD; did you "
                                                    r"mean MODEL\.ROI_HEADS or "):
        build_cfg(str(path), [])


@pytest.mark.parametrize("opts,message", [
    (["MODEL.R3CNN.NUM_LOOP", "2"],
     "command-line opts: unknown config key MODEL.R3CNN.NUM_LOOP; did you mean "
     "MODEL.R3CNN.NUM_LOOPS_TEST or MODEL.R3CNN.NUM_LOOPS_TRAIN?"),
    (["SOLVER.MAXITER", "10"],
     "command-line opts: unknown config key SOLVER.MAXITER; did you mean SOLVER.MAX_ITER?"),
    (["MODEL.ROI_HEAD.NUM_CLASSES", "1"],
     "command-line opts: unknown config key MODEL.ROI_HEAD.NUM_CLASSES; did you mean "
     "MODEL.ROI_HEADS.NUM_CLASSES"),  # (then keys less close)
])
def test_misspelled_key_on_the_command_line(repo_root, monkeypatch, opts, message):
    monkeypatch.chdir(repo_root)
    with pytest.raises(UnknownConfigKeyError) as e:
        build_cfg(CONFIG, opts)
    assert str(e.value).startswith(message)


def test_nothing_close_lists_the_keys_of_the_parent(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(UnknownConfigKeyError) as e:
        build_cfg(CONFIG, ["MODEL.FPN.XYZZY", "1"])
    # Detectron2's defaults (config/defaults.py) give MODEL.FPN these four keys.
    assert str(e.value) == ("command-line opts: unknown config key MODEL.FPN.XYZZY; the keys of "
                            "MODEL.FPN are: FUSE_TYPE, IN_FEATURES, NORM, OUT_CHANNELS")


def test_other_merge_errors_are_yacs_own(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(AssertionError, match="odd length"):
        build_cfg(CONFIG, ["SOLVER.MAX_ITER"])
