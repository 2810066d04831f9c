"""The LM-head loss without full-vocabulary logits for the batch (SFT and DPO).

:class:`LossHead` takes over the ``lm_head`` call inside the model's own forward (so DDP / FSDP2 / ZeRO see one
ordinary forward with their hooks and gathered weights) and, while targets are set, returns the loss instead of
logits. Only positions with a trained target go through the head, in chunks:

* ``chunked``: :class:`_ChunkedCrossEntropySum` computes the summed cross-entropy and its gradients chunk by
  chunk in the forward (one chunk of logits alive at a time, nothing kept for backward but the gradients, the
  same three matmuls as materialised logits); per-token log-probs (DPO) recompute each chunk in backward.
* ``liger``: Liger's fused linear cross-entropy Triton kernel (CUDA, ``liger-kernel`` installed), for SFT sums.
* ``full``: materialise the logits of the trained positions (the reference the others are tested against).

The head sees the final hidden states in the compute dtype and computes log-softmax in fp32.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
import torch.nn.functional as F

from lexforge.train.data import IGNORE

def resolve_cross_entropy(spec, device_type: str) -> str:
    """``auto`` -> liger on CUDA when liger-kernel is installed, else chunked. Fails fast on what cannot run here."""
    from lexforge.train.model import SetupError

    want = spec.hyperparams.cross_entropy
    has_liger = importlib.util.find_spec("liger_kernel") is not None
    if want == "auto":
        return "liger" if device_type == "cuda" and has_liger else "chunked"
    if want == "liger" and (device_type != "cuda" or not has_liger):
        raise SetupError("hyperparams.cross_entropy=liger needs CUDA and the liger-kernel package (pip install "
                         "liger-kernel in the GPU image); use auto or chunked")
    return want


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


class _ChunkedCrossEntropySum(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, t_i), gradients computed in forward chunk by chunk (scaled by grad_output in backward)."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dt = h.dtype
        w = weight.to(dt)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s : s + chunk], targets[s : s + chunk]
            logits = (hc @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(tc.shape[0], device=g.device), tc] -= 1.0
                g = g.to(dt)
                if need_h:
                    grad_h[s : s + chunk] = g @ w
                if need_w and dt == torch.float32:
                    grad_w.addmm_(g.t(), hc)
                elif need_w:
                    grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def _token_logps_chunk(hc: torch.Tensor, w: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
    logits = (hc @ w.to(hc.dtype).t()).float()
    return logits.gather(1, tc[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def cross_entropy_sum(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, impl: str,
                      chunk: int = 1024) -> torch.Tensor:
    """Summed next-token cross-entropy of rows ``h [N, H]`` against ``targets [N]`` (all trained)."""
    if impl == "full":
        return F.cross_entropy((h @ weight.to(h.dtype).t()).float(), targets, reduction="sum")
    if impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        out = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")(weight.to(h.dtype), h, targets)
        out = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
        return out.float()
    return _ChunkedCrossEntropySum.apply(h, weight, targets, chunk)


def token_logps(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, impl: str,
                chunk: int = 1024) -> torch.Tensor:
    """log p(target) per row of ``h [N, H]``; chunked: each chunk's logits are recomputed in backward, not kept."""
    if impl == "full":
        return _token_logps_chunk(h, weight, targets)
    starts = range(0, h.shape[0], chunk)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        from torch.utils.checkpoint import checkpoint

        return torch.cat([checkpoint(_token_logps_chunk, h[s : s + chunk], weight, targets[s : s + chunk],
                                     use_reentrant=False) for s in starts])
    return torch.cat([_token_logps_chunk(h[s : s + chunk], weight, targets[s : s + chunk]) for s in starts])


class LossHead:
    """Makes ``lm_head`` return the loss while :meth:`targets` is active; plain logits otherwise (generation)."""

    def __init__(self, model, impl: str, chunk: int = 1024):
        from lexforge.train.model import SetupError, causal_lm

        head = causal_lm(model).get_output_embeddings()
        if type(head) is not torch.nn.Linear or head.bias is not None:
            raise SetupError(f"hyperparams.cross_entropy={impl} needs a plain bias-free nn.Linear lm_head, this model "
                             f"has {type(head).__name__} (an adapter on lm_head?); drop lm_head from "
                             "lora.target_modules or set cross_entropy=full")
        self.impl, self.chunk, self.head = impl, chunk, head
        self._active: tuple[torch.Tensor, str] | None = None
        self._plain = head.forward
        head.forward = self._forward  # instance attribute: nn.Module.__call__ (and every hook) still runs

    @contextlib.contextmanager
    def targets(self, targets: torch.Tensor, reduction: str):
        """``reduction="sum"``: the forward's ``logits`` is the summed CE (a scalar); ``"token_logps"``: a float32
        tensor shaped like ``targets`` holding log p(target) at trained positions and 0 elsewhere."""
        self._active = (targets, reduction)
        try:
            yield
        finally:
            self._active = None

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._active is None:
            return self._plain(hidden)
        targets, reduction = self._active
        weight = self.head.weight
        mask = targets != IGNORE
        h = hidden[mask].to(_compute_dtype(hidden))
        t = targets[mask]
        if t.numel() == 0:  # a filler micro-batch: zero loss that still reaches every parameter (DDP needs that)
            zero = hidden.sum() * 0.0 + (weight.sum() * 0.0 if weight.requires_grad else 0.0)
            return zero.float() if reduction == "sum" else torch.zeros(targets.shape, device=hidden.device) + zero
        if reduction == "sum":
            return cross_entropy_sum(h, weight, t, self.impl, self.chunk)
        if reduction == "token_logps":
            impl = "full" if self.impl == "full" else "chunked"  # Liger has no per-token output
            out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
            return out.masked_scatter(mask, token_logps(h, weight, t, impl, self.chunk))
        raise ValueError(f"unknown reduction {reduction!r}")
