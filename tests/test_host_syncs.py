"""benchmarks/host_syncs.py: the counter's rules on hand-made calls (which reads of which tensors
a GPU run would sync on)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

from host_syncs import (  # noqa: E402
    HostSyncCounter,
    detectron2_description,
    mark_host,
    on_host,
    sources_digest,
)


def test_reads_of_device_tensors_count_and_reads_on_the_host_do_not():
    data = torch.tensor([0.2, 0.7, 0.9])
    mark_host(data)
    with HostSyncCounter() as counter:
        x = data.to(data.device)  # an upload: a device tensor
        assert not on_host(x)
        x.sum().item()  # 1
        bool((x > 0.5).any())  # 2
        x[x > 0.5]  # 3: boolean indexing
        x[x > 0.5] = 0.0  # a masked_fill: none
        torch.nonzero(x)  # 4
        host = x.cpu()  # 5
        host.tolist()  # on the host already: none
        for v in host:
            v.numpy()  # none
        y = torch.zeros(3, device=x.device) + x
        int(y[0])  # 6
        data.sum().item()  # the input, on the host: none
        torch.arange(3).tolist()  # made on the host (no device given): none
    assert counter.total == 6
    assert counter.counts == {"item": 1, "__bool__": 1, "__getitem__[bool]": 1, "nonzero": 1,
                              "cpu": 1, "__int__": 1}


def test_to_cpu_downloads_only_where_the_line_names_the_cpu():
    x = torch.rand(4)  # not marked: a device tensor
    with HostSyncCounter() as counter:
        same = x.to(x.device)  # stays on the device: no sync
        down = x.to(torch.device("cpu"))  # a download
        down.numpy()
    assert not on_host(same) and on_host(down)
    assert counter.counts == {".to(cpu)": 1}


def test_header_names_the_detectron2_and_whether_its_ops_are_compiled():
    import detectron2
    import detectron2._C as ops

    text = detectron2_description()
    assert text.startswith(f"Detectron2 {detectron2.__version__}, ")
    compiled = ops.__file__.endswith((".so", ".pyd"))  # the v0.6 leg: d2infra's _C.py
    assert ("ops compiled" in text) is compiled and ("ops not compiled" in text) is not compiled
    assert text.endswith(" " + sources_digest(os.path.dirname(detectron2.__file__)))


def test_sources_digest_by_hand(tmp_path):
    """SHA-256 of each .py file's relative path, NUL, bytes, in sorted order; other files are not
    read."""
    import hashlib

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.py").write_bytes(b"x = 1\n")
    (tmp_path / "c.py").write_bytes(b"c = 2\n")
    (tmp_path / "b" / "x.pyc").write_bytes(b"ignored")
    expected = hashlib.sha256(b"b/x.py\0x = 1\nc.py\0c = 2\n").hexdigest()[:12]
    assert sources_digest(str(tmp_path)) == expected
    (tmp_path / "b" / "x.py").write_bytes(b"x = 2\n")
    assert sources_digest(str(tmp_path)) != expected
