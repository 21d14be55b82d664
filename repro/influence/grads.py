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
* Three methods give the same numbers (up to float rounding):

  - ``"hooks"``: one batched forward and one backward per chunk; forward hooks keep each chosen
    module's input and output, the backward gives the gradient w.r.t. every output, and the
    per-example parameter gradients follow in closed form (``nn.Linear``: ``g^T a`` per example;
    ``nn.Conv2d``: the same with unfolded input patches; BatchNorm in eval mode and LayerNorm:
    ``sum g * x_hat`` and ``sum g``). Applies when every chosen parameter is the weight or bias of
    such a module and each of those modules runs once per forward pass. About the cost of one
    training step per chunk (the same identity captum's ``sample_wise_grads_per_batch`` and Opacus
    use; ``benchmarks/bench_tracin_peers.py`` measures it);
  - ``"vmap"``: ``torch.func.functional_call`` + ``vmap(grad(f))`` over chunks of examples;
  - ``"loop"``: one forward/backward per example with ``torch.autograd.grad`` (text examples are
    trimmed to their own length).

  ``"auto"`` picks ``"hooks"`` when it applies (e.g. every parameter of the VGG, or the last
  layers of the text classifier, but not its word embeddings), else the loop when a differentiated
  parameter belongs to an ``nn.Conv2d`` and the device is the CPU (vmap over convolution weights
  materialises per-example weight gradients through grouped convolutions, reported 3-9x slower on
  CPU) and vmap otherwise. When hooks find a module run twice (shared weights) or an input changed
  in place, and when vmap raises (an op without a batching rule, data-dependent control flow), the
  engine falls back to vmap / the loop with a warning.
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

from repro.checks import check_batch, check_unique_ids
from repro.data.core import Batch, Dataset
from repro.errors import EmptyDatasetError, UnknownNameError
from repro.data.core import batch_from
from repro.models.foreign import as_model
from repro.utils import progress as _progress
from repro.utils import resolve_device

__all__ = ["Target", "resolve_target", "per_example_grads", "batch_grad", "grad_dim",
           "param_names", "flat_params", "unflatten", "choose_method", "default_chunk_size",
           "as_batch", "METHODS"]

METHODS = ("auto", "hooks", "vmap", "loop")
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


def as_batch(model, data, what: str = "examples") -> Batch:
    """A :class:`Batch` from a Dataset (``model.encode``), a Batch (unchanged), or plain tensors
    (``(inputs, labels[, ids])`` or a DataLoader of them, see :func:`repro.data.core.batch_from`),
    checked: NaN or infinite inputs raise :class:`repro.errors.NonFiniteInputError` and labels
    outside the model's classes :class:`repro.errors.LabelRangeError`, both naming the example ids."""
    if isinstance(data, Batch):
        batch = data
    elif isinstance(data, Dataset):
        if not callable(getattr(model, "encode", None)):
            raise TypeError(f"{type(model).__name__} cannot encode a repro {type(data).__name__}; pass "
                            "(inputs, labels) tensors or a DataLoader yielding them")
        batch = model.encode(data)
    else:
        batch = batch_from(data, getattr(model, "input_name", "x"))
    check_batch(model, batch, what)
    return batch


def train_batch(model, data, who: str) -> Batch:
    """``data`` as a Batch, checked to be a usable training set (non-empty, finite inputs, labels in
    range, unique ids: :class:`repro.errors.DuplicateIdError` names the repeated ones)."""
    batch = as_batch(model, data, f"{who} training examples")
    if len(batch) == 0:
        raise EmptyDatasetError(f"{who}.fit got no training examples")
    check_unique_ids(batch.ids, f"{who} training examples")
    return batch


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def choose_method(model, device, method: str = "auto", names: Sequence[str] | None = None) -> str:
    """``"hooks"`` when every chosen parameter belongs to a module with a closed-form per-example
    gradient (see module doc); else ``"loop"`` when a differentiated parameter belongs to an
    ``nn.Conv2d`` and the device is the CPU, else ``"vmap"``. Convolutions that are only run forward
    (e.g. for the last layer) do not count: vmap batches them like an ordinary forward pass."""
    if method not in METHODS:
        raise UnknownNameError(f"unknown method {method!r}; use one of {METHODS}")
    if method == "hooks" and hook_modules(model, names) is None:
        raise ValueError("method='hooks' needs every chosen parameter to be the weight or bias of an "
                         "nn.Linear, nn.Conv2d (zero padding), BatchNorm (eval mode, running "
                         "statistics) or nn.LayerNorm; use 'auto', 'vmap' or 'loop'")
    if method != "auto":
        return method
    if hook_modules(model, names) is not None:
        return "hooks"
    return _without_hooks(model, device, names)


def _without_hooks(model, device, names) -> str:
    """The loop for differentiated convolutions on the CPU, else vmap."""
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
    if method in ("loop", "hooks"):
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


# ---------------------------------------------------------------------------- hooks
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _hookable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, nn.Conv2d):
        return mod.padding_mode == "zeros" and not isinstance(mod.padding, str)
    if isinstance(mod, _NORMS):
        # eval mode must normalise with running statistics (checked again at run time)
        return mod.track_running_stats and mod.running_mean is not None
    return isinstance(mod, nn.LayerNorm)


def hook_modules(model, names: Sequence[str] | None) -> dict[str, nn.Module] | None:
    """The modules owning the chosen parameters (``{module name: module}``) when the ``"hooks"``
    method applies to all of them, else None."""
    chosen = set(n for n, _ in model.named_parameters()) if names is None else set(names)
    owners: dict[str, nn.Module] = {}
    covered = set()
    for mod_name, mod in model.named_modules():
        own = {f"{mod_name}.{n}" if mod_name else n: n for n, _ in mod.named_parameters(recurse=False)}
        hit = chosen.intersection(own)
        if not hit:
            continue
        if not _hookable(mod) or any(own[h] not in ("weight", "bias") for h in hit):
            return None
        owners[mod_name] = mod
        covered |= hit
    return owners if owners and covered == chosen else None


class _HookFallback(RuntimeError):
    """The hooks method does not apply to this forward pass (module reused, input changed)."""


def _per_example_param_grads(mod: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example gradients of ``mod``'s weight and bias from its input ``a`` and the gradient
    ``g`` of the summed target w.r.t. its output (both with the example dimension first)."""
    n = a.shape[0]
    out = {}
    if isinstance(mod, nn.Linear):
        a3, g3 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
        out["weight"] = torch.bmm(g3.transpose(1, 2), a3)
        out["bias"] = g3.sum(1)
    elif isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise _HookFallback("grouped convolution")
        cols = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                        stride=mod.stride)                       # (n, C_in*kh*kw, L)
        g3 = g.reshape(n, g.shape[1], -1)                        # (n, C_out, L)
        out["weight"] = torch.bmm(g3, cols.transpose(1, 2)).reshape(n, *mod.weight.shape)
        out["bias"] = g3.sum(2)
    elif isinstance(mod, _NORMS):
        if mod.training:
            raise _HookFallback("BatchNorm in training mode")
        shape = (1, -1) + (1,) * (a.dim() - 2)
        x_hat = (a - mod.running_mean.view(shape)) * torch.rsqrt(mod.running_var.view(shape) + mod.eps)
        dims = list(range(2, a.dim()))
        out["weight"] = (g * x_hat).sum(dims) if dims else g * x_hat
        out["bias"] = g.sum(dims) if dims else g
    else:  # LayerNorm
        k = len(mod.normalized_shape)
        x_hat = F.layer_norm(a, mod.normalized_shape, None, None, mod.eps)
        lead = list(range(1, a.dim() - k))
        out["weight"] = (g * x_hat).sum(lead) if lead else g * x_hat
        out["bias"] = g.sum(lead) if lead else g
    return out


def _capture(model, chunk: Batch, target: Target, owners: dict[str, nn.Module]):
    """One batched forward + backward of ``target`` summed over the chunk with hooks on ``owners``:
    returns ``(order, seen, gouts, value)``, ``seen[m] = (input, its version, output)`` of module
    ``m`` and ``gouts`` the gradients w.r.t. the outputs in ``order`` (None where unused)."""
    seen: dict[str, tuple] = {}

    def make_hook(mod_name):
        def hook(mod, inputs, output):
            if mod_name in seen:
                raise _HookFallback(f"module {mod_name!r} runs more than once per forward pass")
            if not inputs:  # called with keyword arguments: the input is not visible to the hook
                raise _HookFallback(f"module {mod_name!r} was called with keyword arguments")
            a = inputs[0]
            seen[mod_name] = (a.detach(), a._version, output)
            return output.clone()  # later in-place ops act on the copy, not on the kept output
        return hook

    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in owners.items()]
    try:
        with torch.enable_grad():
            logits = model(**chunk.inputs)
            value = target(logits, chunk.labels).sum()
            order = list(owners)
            missing = [m for m in order if m not in seen]
            if missing:
                raise _HookFallback(f"modules {missing} did not run")
            outs = [seen[m][2] for m in order]
            gouts = torch.autograd.grad(value, outs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return order, seen, gouts, value


def _hooks_chunk(model, chunk: Batch, names, target: Target, owners: dict[str, nn.Module],
                 dest: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example gradient rows of one chunk with one batched forward + backward (see module doc),
    written into ``dest`` ``(n, d)`` when given."""
    order, seen, gouts, value = _capture(model, chunk, target, owners)
    n = len(chunk)
    if dest is None:
        dest = torch.empty((n, grad_dim(model, names)), dtype=torch.float32, device=value.device)
    # per-parameter views into the rows (splitting a row's last dimension never copies), so each
    # gradient is written in place: no concatenation copy
    views = unflatten(dest, model, names)
    for m, gout in zip(order, gouts):
        a, version, out = seen[m]
        if a._version != version:
            raise _HookFallback(f"the input of {m!r} was changed in place")
        gout = torch.zeros_like(out) if gout is None else gout
        for pname, grad in _per_example_param_grads(owners[m], a, gout.detach()).items():
            key = f"{m}.{pname}" if m else pname
            if key in views:
                views[key].copy_(grad)
    return dest


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
        model: a :class:`repro.models.ReproModel` or any classifier ``nn.Module`` (see
            :func:`repro.models.foreign.as_model`; parameter names are the module's own).
        batch: a :class:`Batch`, a Dataset (encoded with ``model.encode``) or ``(inputs, labels)``
            tensors / a DataLoader of them (see :func:`repro.data.core.batch_from`).
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
    model = as_model(model)
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
    owners = hook_modules(model, names) if method == "hooks" else None
    with EvalState(model, names, set_requires_grad=True):
        for s in bar:
            chunk = batch[torch.arange(s, min(n, s + chunk_size))].to(dev)
            if use == "hooks":
                direct = projector is None and torch.device(out_device) == dev
                try:
                    g = _hooks_chunk(model, chunk, names, tgt, owners,
                                     dest=out[s:s + len(chunk)] if direct else None)
                    if direct:
                        continue
                except _HookFallback as e:
                    use = _without_hooks(model, dev, names)
                    warnings.warn(f"per-example gradients with hooks do not apply to "
                                  f"{type(model).__name__} ({e}); falling back to {use}",
                                  RuntimeWarning, stacklevel=2)
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
    model = as_model(model)
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
