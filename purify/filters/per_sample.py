"""Per-sample gradients for the data filters, computed in batches with torch.func (vmap over grad), not a loop.

Inside the vmapped function each sample runs through the model as a batch of one. Hugging Face's mask builders
look at the 2-D attention mask's values (``mask.all()``), which vmap cannot do, so every sample carries a ready
4-D additive mask instead (padding, plus causality for decoders); the result is checked against the model's own
batched forward on the first batch (`PerSampleGradients.verify`). Only the parameters named as targets are
differentiated; every other parameter is passed in as a constant.

A sample's loss is the loss on its answer: cross-entropy of the label for a classifier; for a causal LM the
text is the prompt, ``" " + label name`` the answer, and the loss the mean cross-entropy over the answer tokens.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..checkpoint import LoadedModel
from ..data import TaskData
from ..errors import ConfigError, PurifyError
from ..inference import MAX_LENGTH, encode, model_inputs
from ..progress import track

#: a per-sample objective: (logits of a batch of one, that sample's tensors) -> scalar
Objective = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]

#: model types whose position ids Hugging Face derives from the 2-D attention mask (it cannot, given a 4-D one)
_POSITIONS_FROM_MASK = frozenset({"opt"})

_RELATIVE = re.compile(r"^L(-?\d+)(?:\.(.+))?$")


# ---------------------------------------------------------------------------------------------
# Naming parameters


def layer_stack(model: nn.Module) -> tuple[str, int]:
    """Name and length of the model's list of transformer layers (the largest ModuleList of blocks)."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (best is None or len(module) > best[1]):
            best = (name, len(module))
    if best is None:
        raise ConfigError(f"{type(model).__name__} has no list of transformer layers; name target modules in full")
    return best


def expand_name(model: nn.Module, spec: str) -> str:
    """Turn "L<i>.<suffix>" (layer i of the layer stack, negative from the end) into a full module name."""
    match = _RELATIVE.match(spec)
    if match is None:
        return spec
    stack, n = layer_stack(model)
    index = int(match.group(1))
    if not -n <= index < n:
        raise ConfigError(f"{spec!r}: layer {index} does not exist; the model has {n} layers ({stack})")
    full = f"{stack}.{index % n}"
    return f"{full}.{match.group(2)}" if match.group(2) else full


def resolve_matrix(model: nn.Module, spec: str) -> str:
    """The name of one 2-D weight matrix, from a parameter name, a module name (its .weight) or "L<i>.<suffix>"."""
    name = expand_name(model, spec)
    params = dict(model.named_parameters())
    candidate = name if name in params else f"{name}.weight"
    if candidate not in params:
        close = [p for p in params if p.endswith(".weight") and params[p].ndim == 2][:8]
        raise ConfigError(f"{spec!r} names no weight matrix of {type(model).__name__} (e.g. {', '.join(close)})")
    if params[candidate].ndim != 2:
        raise ConfigError(f"{candidate} has shape {tuple(params[candidate].shape)}; a weight matrix is needed")
    return candidate


def resolve_parameters(model: nn.Module, specs: Sequence[str]) -> list[str]:
    """Every parameter named by `specs` (parameter names, module names meaning all their parameters, "L<i>..."),
    in model order without duplicates."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for spec in specs:
        name = expand_name(model, spec)
        if name in params:
            chosen.add(name)
        elif name in modules:
            inside = [f"{name}.{p}" for p, _ in modules[name].named_parameters()]
            if not inside:
                raise ConfigError(f"module {name!r} has no parameters")
            chosen.update(inside)
        else:
            raise ConfigError(f"{spec!r} names no parameter or module of {type(model).__name__}")
    return [p for p in params if p in chosen]


# ---------------------------------------------------------------------------------------------
# Inputs


def is_causal(model: nn.Module) -> bool:
    """True when the model's attention is causal (decoders), so the 4-D mask must be too."""
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def additive_mask(attention_mask: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 padding mask -> (B, 1, T, T) additive mask: 0 where attention is allowed, dtype-min elsewhere."""
    b, t = attention_mask.shape
    allowed = attention_mask[:, None, None, :].bool().expand(b, 1, t, t)
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()[None, None]
    zeros = torch.zeros(b, 1, t, t, dtype=dtype, device=attention_mask.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


def _answer_texts(data: TaskData) -> tuple[list[str], list[str]]:
    """Prompts and prompt + answer texts for a causal LM: the answer is a space and the label's name."""
    prompts = data.texts
    full = [f"{t} {data.label_names[y]}" for t, y in zip(prompts, data.labels)]
    return prompts, full


def token_lengths(loaded: LoadedModel, data: TaskData, max_length: int = MAX_LENGTH, *,
                  answers: bool = True) -> np.ndarray:
    """Number of real tokens of each sample's model input, for length-sorted batching."""
    texts = _answer_texts(data)[1] if loaded.task == "causal_lm" and answers else data.texts
    out = []
    for start in range(0, len(texts), 256):
        out.append(encode(loaded.tokenizer, texts[start:start + 256], max_length)["attention_mask"].sum(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def sample_batch(loaded: LoadedModel, data: TaskData, max_length: int = MAX_LENGTH, *,
                 answers: bool = True) -> dict[str, torch.Tensor]:
    """Tensors for `data` on the model's device: the model inputs plus `labels` (classifier) or `answer_mask`
    (causal LM; with `answers=False` the texts alone, as prompts), and `mask4`, the 4-D additive attention mask
    the vmapped forward uses."""
    model = loaded.model
    if loaded.task == "causal_lm" and not answers:
        batch = model_inputs(model, encode(loaded.tokenizer, data.texts, max_length))
    elif loaded.task == "causal_lm":
        prompts, full = _answer_texts(data)
        batch = model_inputs(model, encode(loaded.tokenizer, full, max_length))
        mask = batch["attention_mask"]
        n_prompt = encode(loaded.tokenizer, prompts, max_length)["attention_mask"].sum(1).to(mask.device)
        n_answer = (mask.sum(1) - n_prompt).clamp_min(1)  # truncation can eat the answer: keep its last token
        # rank of each real token from the end: 1 for the last one, whichever side the tokenizer pads
        rank_from_end = torch.flip(torch.cumsum(torch.flip(mask, [1]), 1), [1]) * mask
        batch["answer_mask"] = ((rank_from_end >= 1) & (rank_from_end <= n_answer[:, None])).to(torch.float32)
    else:
        batch = model_inputs(model, encode(loaded.tokenizer, data.texts, max_length))
        batch["labels"] = torch.as_tensor(data.labels, dtype=torch.long, device=batch["input_ids"].device)
    dtype = next(model.parameters()).dtype
    batch["mask4"] = additive_mask(batch["attention_mask"], is_causal(model), dtype)
    if model.config.model_type in _POSITIONS_FROM_MASK:
        m = batch["attention_mask"].long()
        batch["position_ids"] = (torch.cumsum(m, 1) * m - 1).clamp_min(0)
    return batch


def length_sorted_batches(loaded: LoadedModel, data: TaskData, batch_size: int, max_length: int = MAX_LENGTH, *,
                          answers: bool = True) -> list[np.ndarray]:
    """Positions of `data` grouped into batches of similar token length (less padding), deterministic."""
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    order = np.argsort(token_lengths(loaded, data, max_length, answers=answers), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------------------------------
# Objectives


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits up to float32; float32 and float64 stay as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def classification_loss(logits: torch.Tensor, example: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the sample's label; logits (1, C)."""
    return F.cross_entropy(_full_precision(logits), example["labels"].reshape(1))


def answer_loss(logits: torch.Tensor, example: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens; logits (1, T, V)."""
    pred = _full_precision(logits[0, :-1])
    target = example["input_ids"][1:]
    weight = example["answer_mask"][1:]
    ce = F.cross_entropy(pred, target, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def sample_objective(loaded: LoadedModel) -> Objective:
    """The per-sample loss for this model's head."""
    return answer_loss if loaded.task == "causal_lm" else classification_loss


def last_token_logit_margin(plus_id: int, minus_id: int) -> Objective:
    """logit[plus] - logit[minus] at the prompt's last real token (a causal LM's next-token preference)."""

    def margin(logits: torch.Tensor, example: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = example["attention_mask"]
        last = (torch.arange(mask.shape[0], device=mask.device) * mask).argmax()
        row = _full_precision(logits[0]).index_select(0, last.reshape(1))[0]
        return row[plus_id] - row[minus_id]

    return margin


# ---------------------------------------------------------------------------------------------
# Per-sample gradients


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with eager attention inside the block: SDPA has no vmap batching rule on CPU (it falls back
    to a slow per-sample loop), eager attention is plain batched matmuls."""
    setter = getattr(model, "set_attn_implementation", None)
    before = getattr(model.config, "_attn_implementation", None)
    if setter is None or before in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


class PerSampleGradients:
    """Gradients of a per-sample objective with respect to chosen parameters, one row per sample, via vmap(grad)."""

    def __init__(self, model: nn.Module, targets: Sequence[str], objective: Objective, *,
                 chunk_size: int | None = None) -> None:
        params = dict(model.named_parameters())
        missing = [t for t in targets if t not in params]
        if missing:
            raise ConfigError(f"no parameters named {missing}")
        if not targets:
            raise ConfigError("no target parameters to differentiate")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError("chunk_size must be >= 1 or None")
        self.model = model
        self.targets = list(targets)
        self.objective = objective
        self.chunk_size = chunk_size
        self.constants = {n: p.detach() for n, p in params.items() if n not in set(targets)}

    def target_values(self) -> dict[str, torch.Tensor]:
        """Current values of the differentiated parameters (detached)."""
        params = dict(self.model.named_parameters())
        return {n: params[n].detach() for n in self.targets}

    def _one(self, weights: dict[str, torch.Tensor], example: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective of one sample, run through the model as a batch of one."""
        inputs = {k: v.unsqueeze(0) for k, v in example.items() if k in ("input_ids", "token_type_ids", "position_ids")}
        inputs["attention_mask"] = example["mask4"].unsqueeze(0)
        out = functional_call(self.model, (self.constants, weights), args=(), kwargs=inputs)
        return self.objective(out.logits, example)

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({name: (B, *shape) gradients}, (B,) objective values) for a batch from `sample_batch`."""
        was_training = self.model.training
        self.model.eval()  # no dropout: a sample's gradient must not depend on the batch it sits in
        try:
            with eager_attention(self.model):
                fn = vmap(grad_and_value(self._one), in_dims=(None, 0), chunk_size=self.chunk_size)
                grads, values = fn(self.target_values(), batch)
        finally:
            self.model.train(was_training)
        return grads, values.detach()

    @torch.no_grad()
    def verify(self, batch: dict[str, torch.Tensor], *, rtol: float = 1e-3, atol: float = 1e-4) -> None:
        """Check the vmapped objective against the model's ordinary batched forward (2-D mask) on this batch.

        Raises PurifyError when they disagree, which would mean the 4-D mask does not reproduce how this
        architecture attends (e.g. sliding windows), so per-sample gradients would be of a different function.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
            logits = self.model(**inputs).logits
            reference = torch.stack([
                self.objective(logits[i:i + 1], {k: v[i] for k, v in batch.items()}) for i in range(len(logits))
            ])
            with eager_attention(self.model):
                vmapped = vmap(self._one, in_dims=(None, 0), chunk_size=self.chunk_size)(self.target_values(), batch)
        finally:
            self.model.train(was_training)
        if not torch.allclose(vmapped.float(), reference.float(), rtol=rtol, atol=atol):
            gap = float((vmapped.float() - reference.float()).abs().max())
            raise PurifyError(
                f"per-sample forward of {type(self.model).__name__} differs from its batched forward by {gap:.3g}; "
                "this architecture's attention is not reproduced by a plain padding/causal mask, so its per-sample "
                "gradients cannot be computed here"
            )


def iter_gradients(loaded: LoadedModel, data: TaskData, computer: PerSampleGradients, *, batch_size: int,
                   max_length: int = MAX_LENGTH, description: str = "per-sample gradients", verify: bool = True,
                   answers: bool = True) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
    """Yield (positions in `data`, gradients, objective values) batch by batch, batches sorted by token length."""
    batches = length_sorted_batches(loaded, data, batch_size, max_length, answers=answers)
    for i, positions in enumerate(track(batches, description=description, total=len(batches))):
        batch = sample_batch(loaded, data.subset(positions.tolist()), max_length, answers=answers)
        if verify and i == 0:
            computer.verify(batch)
        grads, values = computer(batch)
        yield positions, grads, values


# ---------------------------------------------------------------------------------------------
# Seeded random projections (to bound what is stored or decomposed)


class CountSketch:
    """A seeded sparse sign projection R^D -> R^k: coordinate j goes to bucket h(j) with sign s(j).

    Inner products are preserved in expectation, and it needs O(D) memory (no D x k matrix), which is what makes
    it usable on millions of gradient coordinates.
    """

    def __init__(self, dim_in: int, dim_out: int, *, seed: int, device: torch.device | str = "cpu") -> None:
        if dim_out < 1:
            raise ConfigError("projection dimension must be >= 1")
        gen = torch.Generator().manual_seed(int(seed))
        self.dim_in, self.dim_out = int(dim_in), int(dim_out)
        self.bucket = torch.randint(0, dim_out, (dim_in,), generator=gen).to(device)
        self.sign = (torch.randint(0, 2, (dim_in,), generator=gen) * 2 - 1).to(device=device, dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project rows: (B, D) -> (B, k)."""
        if x.shape[-1] != self.dim_in:
            raise ValueError(f"expected {self.dim_in} coordinates, got {x.shape[-1]}")
        out = torch.zeros(x.shape[0], self.dim_out, device=x.device, dtype=torch.float32)
        return out.index_add_(1, self.bucket, x.float() * self.sign)


def gaussian_sketch(n: int, k: int, *, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded (n, k) Gaussian matrix with variance 1/k entries: X @ it keeps X's leading singular values roughly."""
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randn(n, k, generator=gen) / k ** 0.5).to(device)


def flatten(grads: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Concatenate per-sample gradients of several parameters into (B, D) float32 rows, in `names` order."""
    return torch.cat([grads[n].reshape(grads[n].shape[0], -1).float() for n in names], dim=1)
