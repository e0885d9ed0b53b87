"""benchmarks/host_syncs.py: the counter's rules on hand-made calls (which reads of which tensors
a GPU run would sync on)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

from host_syncs import HostSyncCounter, mark_host, on_host  # noqa: E402


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
