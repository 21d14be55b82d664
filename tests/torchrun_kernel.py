"""Helper of tests/test_distributed.py (not a test): the topology of ``torchrun ... repro run``
without Jupyter. Launched as ``python -m torch.distributed.run --nproc-per-node 2 tests/torchrun_kernel.py
SETUP OUT``: rank 1 serves; rank 0 starts a child process (standing in for the notebook's kernel,
which inherits rank 0's environment) that joins as rank 0 through ``repro.distributed.connect`` and
computes every estimator of the test through ``repro.distributed.shard``."""
import os
import subprocess
import sys

import torch

from repro import distributed


def kernel(setup_path: str, out_path: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from test_distributed import _compute

    torch.set_num_threads(1)
    assert distributed.connect(), "the kernel did not join the process group"
    setup = torch.load(setup_path, weights_only=False)  # written by the test itself
    got = _compute(setup, wrap=distributed.shard)
    # an estimator dropped in the kernel is dropped on the serving ranks too (message "del")
    throwaway = distributed.shard(_make_throwaway(setup))
    assert type(throwaway).__name__ == "_Driven"
    del throwaway
    got["world"] = torch.distributed.get_world_size()
    torch.save(got, out_path)
    # no explicit release: the serving rank is let go when this process exits (atexit)


def _make_throwaway(setup):
    from repro.influence import TracInCP

    return TracInCP(setup["mlp"], setup["run"], params="last", progress=False)


if __name__ == "__main__":
    if sys.argv[1] == "--kernel":
        kernel(sys.argv[2], sys.argv[3])
    elif distributed.launch_role() == "worker":
        sys.exit(distributed.serve())
    else:
        env = {**os.environ, distributed.DRIVER_ENV: "driver"}
        sys.exit(subprocess.run([sys.executable, __file__, "--kernel", *sys.argv[1:]], env=env).returncode)
