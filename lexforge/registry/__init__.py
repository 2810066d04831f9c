"""MLflow model registry: register trained adapters/models with their evidence, the promotion gate,
atomic promote/rollback with an audit trail, and resolving ``models:/<name>@champion`` to local files.

Model versions point at a plain artifact directory logged with ``log_artifacts`` (the PEFT adapter or full
HF weights, exactly as training wrote them) rather than an MLflow flavour: it needs no network, no pip
environment capture and no model signature, survives any PEFT/transformers version and is what vLLM and
Ray Serve load directly. See docs/registry.md.

Aliases: ``champion`` (served), ``challenger`` (newest registered candidate), ``previous_champion``
(target of ``rollback``). Never imports prefect.
"""

from lexforge.registry.core import (
    ModelVersionInfo,
    RegistryError,
    Servable,
    audit_log,
    list_versions,
    promote,
    register_model,
    resolve_servable,
    rollback,
    weights_digest,
)
from lexforge.registry.policy import PromotionDecision, PromotionRefused, decide_promotion, decision_markdown

__all__ = [
    "ModelVersionInfo", "RegistryError", "Servable", "PromotionDecision", "PromotionRefused", "register_model",
    "decide_promotion", "decision_markdown", "promote", "rollback", "resolve_servable", "list_versions", "audit_log",
    "weights_digest",
]
