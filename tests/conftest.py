import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def minilm_spec():
    """Spec of a small MiniLM classifier (short sequences keep CPU tests fast)."""
    return {"kind": "text", "num_classes": 2, "model_name": "minilm", "max_length": 48}


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for a module of many tiny per-example ops: with 2 threads they slow down
    10-100x when the 2 cores are shared with other processes. Numbers do not depend on it; the
    previous setting is restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
