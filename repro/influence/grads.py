"""The per-example gradient engine shared by every gradient-based estimator.

``per_example_grads(model, batch, params=...)`` returns one flattened gradient row per example,
float32, in the order of ``model.param_group(params)``. Estimators differ in *which* parameters
they differentiate and *how* they combine rows (TracIn: dot products summed over checkpoints;
influence functions: inverse-Hessian-vector products), never in how the rows are taken.

Conventions:

* The model is evaluated in **eval mode**: BatchNorm uses its running statistics, dropout is off,
  and no turn-over ids are passed (``ids=None``, so turn-over dropout is the identity). Each row is
  then a function of its own example only, exactly as at prediction time. The caller's
  ``model.training`` flag and ``requires_grad`` flags are restored afterwards.
* Only the chosen parameters are differentiated; the other parameters and the buffers are held
  fixed. Frozen parameters (``requires_grad=False``) can still be chosen.
* Two methods give the same numbers (up to float rounding):

  - ``"vmap"``: ``torch.func.functional_call`` + ``vmap(grad(f))`` over chunks of examples;
  - ``"loop"``: one forward/backward per example with ``torch.autograd.grad`` (text examples are
    trimmed to their own length).

  ``"auto"`` picks the loop when a differentiated parameter belongs to an ``nn.Conv2d`` and the
  device is the CPU (vmap over convolution weights materialises per-example weight gradients through
  grouped convolutions, reported 3-9x slower on CPU; see ``benchmarks/bench_influence.py`` for the
  numbers on your machine) and vmap otherwise (e.g. the last layer of a VGG: its convolutions are
  only run forward, which vmap batches like an ordinary forward pass);
  when vmap raises (an op without a batching rule, data-dependent control flow) it falls back to
  the loop with a warning.
* Text batches: ``batch[idx]`` trims padding columns to the chunk's longest example; under vmap the
  shorter examples of a chunk stay padded and the attention mask keeps padding out of the result.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repro.data.core import Batch, Dataset
from repro.errors import EmptyDatasetError, UnknownNameError
from repro.utils import progress as _progress
from repro.utils import resolve_device

__all__ = ["Target", "resolve_target", "per_example_grads", "batch_grad", "grad_dim",
           "param_names", "flat_params", "unflatten", "choose_method", "default_chunk_size",
           "as_batch", "METHODS"]

METHODS = ("auto", "vmap", "loop")
# default memory budget for one chunk of gradient rows (before projection)
_CHUNK_BYTES = 256 * 2**20
_MAX_CHUNK = 64


# ---------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """A differentiable per-example scalar of ``(logits, labels)``.

    ``fn(logits (b, C), labels (b,)) -> (b,)``. ``name`` goes into cache stamps. ``higher_is_better``
    says which direction is "good" for the example (False for a loss, True for a logit or a
    probability); TracInCP uses it to keep "positive score = proponent" for every target.
    """

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    name: str
    higher_is_better: bool = False

    def __call__(self, logits, labels):
        return self.fn(logits, labels)


def _f32(logits):
    """Half-precision logits are promoted to float32; float32/float64 keep their precision."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _ce(logits, labels):
    return F.cross_entropy(_f32(logits), labels, reduction="none")


def _label_logit(logits, labels):
    return _f32(logits).gather(1, labels.view(-1, 1)).squeeze(1)


def _label_log_prob(logits, labels):
    return torch.log_softmax(_f32(logits), 1).gather(1, labels.view(-1, 1)).squeeze(1)


def _label_prob(logits, labels):
    return torch.softmax(_f32(logits), 1).gather(1, labels.view(-1, 1)).squeeze(1)


def _margin(logits, labels):
    lg = _f32(logits)
    own = lg.gather(1, labels.view(-1, 1)).squeeze(1)
    others = lg.masked_fill(F.one_hot(labels, lg.shape[1]).bool(), float("-inf"))
    return own - others.max(1).values


TARGETS = {
    "loss": Target(_ce, "loss", False),
    "logit": Target(_label_logit, "logit", True),
    "log_prob": Target(_label_log_prob, "log_prob", True),
    "prob": Target(_label_prob, "prob", True),
    "margin": Target(_margin, "margin", True),
}


def resolve_target(target=None) -> Target:
    """``None``/``"loss"``: cross-entropy with the example's label (the default). ``"logit"``,
    ``"log_prob"``, ``"prob"``: of the labelled class (pass the class of interest as the label);
    ``"margin"``: label logit minus the largest other logit. A callable ``f(logits, labels) -> (b,)``
    is taken as a loss-like target named after the function; wrap it in :class:`Target` to name it
    or to say that higher is better."""
    if target is None:
        return TARGETS["loss"]
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target not in TARGETS:
            raise UnknownNameError(f"unknown target {target!r}; use one of {list(TARGETS)} or a callable")
        return TARGETS[target]
    if callable(target):
        name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
        return Target(target, name, False)
    raise TypeError(f"target must be None, a name, a Target or a callable, got {type(target).__name__}")


# ---------------------------------------------------------------------------- parameters
def param_names(model, params="all") -> list[str]:
    """Names of the chosen parameters in ``named_parameters`` order (``model.param_group`` when the
    model has it, else ``"all"`` or a list of names / prefixes)."""
    if hasattr(model, "param_group"):
        names = model.param_group(params)
    else:
        all_names = [n for n, _ in model.named_parameters()]
        if params == "all":
            names = all_names
        elif isinstance(params, str):
            raise UnknownNameError(f"{type(model).__name__} has no param_group; pass 'all' or names")
        else:
            wanted = list(params)
            names = [n for n in all_names if any(n == w or n.startswith(w.rstrip(".") + ".") for w in wanted)]
    if not names:
        raise UnknownNameError(f"parameter group {params!r} selects no parameters")
    return list(names)


def grad_dim(model, params="all") -> int:
    """Length of one flattened gradient row for ``params``."""
    p = dict(model.named_parameters())
    return sum(p[n].numel() for n in param_names(model, params))


def flat_params(model, params="all") -> torch.Tensor:
    """The chosen parameters as one flat float32 vector (detached copy)."""
    p = dict(model.named_parameters())
    return torch.cat([p[n].detach().reshape(-1).float() for n in param_names(model, params)])


def unflatten(vec: torch.Tensor, model, params="all") -> dict[str, torch.Tensor]:
    """Split a flat vector (or rows ``(n, d)``) back into tensors shaped like the parameters."""
    p = dict(model.named_parameters())
    names = param_names(model, params)
    lead = vec.shape[:-1]
    out, start = {}, 0
    for n in names:
        k = p[n].numel()
        out[n] = vec[..., start:start + k].reshape(*lead, *p[n].shape)
        start += k
    if start != vec.shape[-1]:
        raise ValueError(f"vector has length {vec.shape[-1]}, parameters need {start}")
    return out


def as_batch(model, data) -> Batch:
    """A :class:`Batch` from a Dataset (``model.encode``) or a Batch (unchanged)."""
    if isinstance(data, Batch):
        return data
    if isinstance(data, Dataset):
        return model.encode(data)
    raise TypeError(f"expected a repro Dataset or Batch, got {type(data).__name__}")


def train_batch(model, data, who: str) -> Batch:
    """``data`` as a Batch, checked to be a usable training set (non-empty, unique ids)."""
    batch = as_batch(model, data)
    if len(batch) == 0:
        raise EmptyDatasetError(f"{who}.fit got no training examples")
    if len(torch.unique(batch.ids)) != len(batch):
        raise ValueError("training example ids must be unique")
    return batch


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def choose_method(model, device, method: str = "auto", names: Sequence[str] | None = None) -> str:
    """``"loop"`` when a differentiated parameter belongs to an ``nn.Conv2d`` and the device is the
    CPU, else ``"vmap"`` (see module doc). Convolutions that are only run forward (e.g. for the last
    layer) do not count: vmap batches them like an ordinary forward pass."""
    if method not in METHODS:
        raise UnknownNameError(f"unknown method {method!r}; use one of {METHODS}")
    if method != "auto":
        return method
    if torch.device(device).type != "cpu":
        return "vmap"
    chosen = None if names is None else set(names)
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            own = [f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters(recurse=False)]
            if chosen is None or chosen.intersection(own):
                return "loop"
    return "vmap"


def default_chunk_size(d: int, method: str) -> int:
    """Examples per chunk: bounded by a 256 MiB budget for the chunk's gradient rows."""
    if method == "loop":
        return max(1, min(_MAX_CHUNK, _CHUNK_BYTES // max(1, 4 * d)))
    # vmap also keeps per-example copies of intermediate gradients: keep a margin of 2
    return max(1, min(_MAX_CHUNK, _CHUNK_BYTES // max(1, 8 * d)))


class EvalState:
    """Context: eval mode, chosen params require grad (others not); restores both on exit."""

    def __init__(self, model, names: Sequence[str], set_requires_grad: bool):
        self.model, self.names, self.set_rg = model, set(names), set_requires_grad

    def __enter__(self):
        self.training = self.model.training
        self.flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self.model.eval()
        if self.set_rg:
            for n, p in self.model.named_parameters():
                p.requires_grad_(n in self.names)
        return self

    def __exit__(self, *exc):
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.flags[n])
        self.model.train(self.training)
        return False


# ---------------------------------------------------------------------------- engine
def _loop_chunk(model, chunk: Batch, names, target: Target) -> torch.Tensor:
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    rows = []
    for i in range(len(chunk)):
        ex = chunk[i]  # trims text padding to this example's length
        with torch.enable_grad():
            logits = model(**ex.inputs)
            value = target(logits, ex.labels).sum()
            gs = torch.autograd.grad(value, chosen, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                               for g, p in zip(gs, chosen)]))
    return torch.stack(rows)


def _is_hf_text_model(model) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, PreTrainedModel) for m in model.modules())


def _vmap_inputs(model, inputs: dict) -> dict:
    """Inputs that vmap can batch. Hugging Face encoders inspect a 2-D padding mask with
    ``mask.all()`` (data-dependent control flow, which vmap refuses); an already prepared 4-D
    additive mask ``(n, 1, 1, L)`` (0 = attend, dtype-min = padding) is used as it is, so we pass
    that. It is exactly the mask the encoder would build from the 2-D one."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2 or not _is_hf_text_model(model):
        return inputs
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    additive = (1.0 - mask.to(dtype)) * torch.finfo(dtype).min
    return {**inputs, "attention_mask": additive[:, None, None, :]}


def _vmap_chunk(model, chunk: Batch, names, target: Target) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    chosen = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    fixed.update({n: b for n, b in model.named_buffers()})

    def value(p_sel, inputs, label):
        inputs = {k: v.unsqueeze(0) for k, v in inputs.items()}
        logits = functional_call(model, (p_sel, fixed), args=(), kwargs=inputs, strict=False)
        return target(logits, label.unsqueeze(0)).sum()

    g = vmap(grad(value), in_dims=(None, 0, 0), randomness="error")(
        chosen, _vmap_inputs(model, chunk.inputs), chunk.labels)
    n = len(chunk)
    return torch.cat([g[k].reshape(n, -1).float() for k in names], 1)


def _prepare(model, batch, params, target, device):
    """Common set-up: the batch, parameter names, target, and the device (the model is moved there)."""
    batch = as_batch(model, batch)
    names = param_names(model, params)
    tgt = resolve_target(target)
    dev = _model_device(model) if device is None else resolve_device(device)
    if _model_device(model) != dev:
        model.to(dev)
    return batch, names, tgt, dev


def per_example_grads(model, batch, params="all", target=None, method: str = "auto",
                      chunk_size: int | None = None, projector=None, device=None,
                      progress: bool = False, out_device="cpu") -> torch.Tensor:
    """Per-example gradients of ``target(model(x_i), y_i)`` w.r.t. the chosen parameters.

    Args:
        model: a :class:`repro.models.ReproModel` (any ``nn.Module`` whose ``forward(**inputs)``
            returns logits works with ``params="all"`` or a list of names).
        batch: a :class:`Batch` or a Dataset (encoded with ``model.encode``).
        params: ``"all"``, ``"last"``, ``"embeddings"``, ``"trainable"``, or parameter names /
            prefixes (see ``model.param_group``).
        target: per-example scalar to differentiate (see :func:`resolve_target`); default: the
            cross-entropy loss of the example with its label.
        method: ``"auto"``, ``"vmap"`` or ``"loop"`` (see module doc).
        chunk_size: examples per chunk (default: from a 256 MiB budget for the rows, at most 64).
        projector: optional :class:`repro.influence.projection.Projector`; each chunk is projected
            right away, so the full ``(n, d)`` matrix never exists.
        device: where to compute (default: the model's device). The model is moved there.
        progress: show a progress bar over chunks.
        out_device: where the result lives (default CPU).

    Returns:
        float32 tensor ``(n, d)`` (``d = grad_dim(model, params)``, or ``projector.dim_out``), rows
        in batch order, columns in the order of the parameter names.
    """
    batch, names, tgt, dev = _prepare(model, batch, params, target, device)
    method = choose_method(model, dev, method, names)
    d = grad_dim(model, names)
    if projector is not None and projector.dim_in != d:
        raise ValueError(f"projector expects dim_in={projector.dim_in}, gradients have d={d}")
    chunk_size = int(chunk_size or default_chunk_size(d, method))
    n = len(batch)
    out_dim = projector.dim_out if projector is not None else d
    out = torch.empty((n, out_dim), dtype=torch.float32, device=out_device)
    starts = range(0, n, chunk_size)
    bar = _progress(starts, total=len(starts), desc=f"per-example grads ({method})",
                    disable=not progress, leave=False)
    use = method
    with EvalState(model, names, set_requires_grad=True):
        for s in bar:
            chunk = batch[torch.arange(s, min(n, s + chunk_size))].to(dev)
            if use == "vmap":
                try:
                    g = _vmap_chunk(model, chunk, names, tgt)
                except Exception as e:  # no batching rule, data-dependent control flow, ...
                    warnings.warn(f"vmap failed for {type(model).__name__} ({type(e).__name__}: "
                                  f"{str(e)[:200]}); falling back to the per-example loop",
                                  RuntimeWarning, stacklevel=2)
                    use = "loop"
            if use == "loop":
                g = _loop_chunk(model, chunk, names, tgt)
            if projector is not None:
                g = projector.project(g)
            out[s:s + len(chunk)] = g.to(out_device)
    return out


def batch_grad(model, batch, params="all", target=None, batch_size: int = 64, device=None,
               progress: bool = False, out_device="cpu") -> torch.Tensor:
    """Gradient of the **mean** target over the batch w.r.t. the chosen parameters, flat ``(d,)``.

    Same conventions as :func:`per_example_grads` (eval mode, no turn-over ids, other parameters
    fixed), computed with ordinary autograd over mini-batches of ``batch_size`` (each weighted by
    its size)."""
    batch, names, tgt, dev = _prepare(model, batch, params, target, device)
    params_ = dict(model.named_parameters())
    chosen = [params_[k] for k in names]
    total = [torch.zeros_like(p, dtype=torch.float32) for p in chosen]
    n = len(batch)
    with EvalState(model, names, set_requires_grad=True):
        for mb in _progress(batch.batches(batch_size), total=math.ceil(n / batch_size),
                            desc="batch grad", disable=not progress, leave=False):
            mb = mb.to(dev)
            with torch.enable_grad():
                value = tgt(model(**mb.inputs), mb.labels).sum() / n
                gs = torch.autograd.grad(value, chosen, allow_unused=True)
            for t, g in zip(total, gs):
                if g is not None:
                    t.add_(g.float())
    return torch.cat([t.reshape(-1) for t in total]).to(out_device)
