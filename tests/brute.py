"""Ground-truth helpers shared by the tests: per-example gradients by one autograd call per example."""
import copy

import torch
import torch.nn.functional as F


def _examples(data):
    """``(call, labels)`` per example: a repro Batch (keyword inputs) or raw ``(inputs, labels)``
    with inputs a tensor (called positionally) or a dict of tensors (keywords)."""
    if isinstance(data, tuple):
        inputs, labels = data
        for i in range(len(labels)):
            if isinstance(inputs, dict):
                yield (lambda m, i=i: m(**{k: v[i:i + 1] for k, v in inputs.items()})), labels[i:i + 1]
            else:
                yield (lambda m, i=i: m(inputs[i:i + 1])), labels[i:i + 1]
        return
    for i in range(len(data)):
        ex = data[i]
        yield (lambda m, ex=ex: m(**ex.inputs)), ex.labels


def brute_grads(model, data, names, checkpoint=None, state=None) -> torch.Tensor:
    """Flattened per-example cross-entropy gradients w.r.t. the parameters ``names`` (in that order),
    one autograd call per example, in eval mode; at ``checkpoint`` / state dict ``state`` (loaded
    into a copy) if given. ``data``: a repro Batch, or raw ``(inputs, labels)`` for modules repro
    did not build (outputs with ``.logits`` are unwrapped)."""
    m = copy.deepcopy(model)
    if checkpoint is not None:
        checkpoint.load_into(m)
    if state is not None:
        m.load_state_dict(state)
    m.eval()
    params = dict(m.named_parameters())
    rows = []
    for call, labels in _examples(data):
        out = call(m)
        loss = F.cross_entropy(getattr(out, "logits", out), labels)
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def planted_mislabelled(n: int = 400, shift: int = 3):
    """400 stratified Fashion-MNIST training images plus one planted example: test image 1 with a
    wrong label (its label + ``shift`` mod 10) and id 900001. Returns ``(train, target, wrong)``,
    ``target`` being that test image with its true label."""
    import dataclasses

    import numpy as np

    from repro.data import concat_datasets, load

    train = load("fashion_mnist", n=n, seed=0, stratify=True)
    test = load("fashion_mnist", "test", n=50, seed=0)
    target = test.subset([1])
    wrong = (target.labels + shift) % 10
    plant = dataclasses.replace(target, ids=np.array([900_001]), labels=wrong, split="train")
    return concat_datasets([train, plant]), target, wrong
