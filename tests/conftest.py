import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def minilm_spec():
    """Spec of a small MiniLM classifier (short sequences keep CPU tests fast)."""
    return {"kind": "text", "num_classes": 2, "model_name": "minilm", "max_length": 48}
