"""Exact attention for packed micro-batches where flash-attn's varlen kernel is not available (CPU, CUDA without
flash-attn).

transformers 5 already keeps packed examples apart under ``sdpa``/``eager`` when it is given ``position_ids`` and
no attention mask (``masking_utils.find_packed_sequence_indices`` -> a block-diagonal ``[L, L]`` mask), but SDPA
then computes all ``L^2`` scores of the pack: measured on CPU that is slower than padding. So lexforge registers
one more attention implementation, :data:`PACKED_SDPA`: with ``cu_seq_lens_q`` in the forward kwargs (what the
packed collator passes, as for flash-attn varlen) it runs causal SDPA on each example's slice (``sum(len^2)``
scores, nothing across examples); without them it is plain ``sdpa`` with transformers' own mask.
"""

from __future__ import annotations

import contextlib
import contextvars

PACKED_SDPA = "lexforge_packed_sdpa"

_PACKED = contextvars.ContextVar("lexforge_packed_forward", default=False)


@contextlib.contextmanager
def packed_forward():
    """Mark a forward as packed: the mask builder then skips the (unused) ``[L, L]`` mask."""
    token = _PACKED.set(True)
    try:
        yield
    finally:
        _PACKED.reset(token)


def _packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                 **kwargs):
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row (batch size 1)")
    gqa = query.shape[1] != key.shape[1]
    bounds = cu.tolist()
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                           dropout_p=dropout, scale=scaling, enable_gqa=gqa)
            for s, e in zip(bounds[:-1], bounds[1:])]
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def _packed_sdpa_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    if _PACKED.get():
        return None
    return sdpa_mask(*args, **kwargs)


def register_packed_sdpa() -> str:
    """Register :data:`PACKED_SDPA` with transformers (idempotent, per process); returns its name."""
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface

    fn = torch.compiler.disable(_packed_sdpa)  # the per-example loop is data dependent: keep it out of graphs
    AttentionInterface.register(PACKED_SDPA, fn)
    AttentionMaskInterface.register(PACKED_SDPA, _packed_sdpa_mask)
    return PACKED_SDPA
