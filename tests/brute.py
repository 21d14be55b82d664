"""Ground-truth helpers shared by the tests: per-example gradients by one autograd call per example."""
import copy

import torch
import torch.nn.functional as F


def brute_grads(model, batch, names, checkpoint=None) -> torch.Tensor:
    """Flattened per-example cross-entropy gradients w.r.t. the parameters ``names`` (in that order),
    one autograd call per example, in eval mode; at ``checkpoint`` (loaded into a copy) if given."""
    m = copy.deepcopy(model)
    if checkpoint is not None:
        checkpoint.load_into(m)
    m.eval()
    params = dict(m.named_parameters())
    rows = []
    for i in range(len(batch)):
        ex = batch[i]
        loss = F.cross_entropy(m(**ex.inputs), ex.labels)
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)
