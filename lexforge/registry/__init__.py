"""MLflow model registry: register trained adapters/models with their evidence, the promotion gate,
atomic promote/rollback with an audit trail, and resolving ``models:/<name>@champion`` to local files.

Model versions point at a plain artifact directory logged with ``log_artifacts`` (the PEFT adapter or full
HF weights, exactly as training wrote them) rather than an MLflow flavour: it needs no network, no pip
environment capture and no model signature, survives any PEFT/transformers version and is what vLLM and
Ray Serve load directly. See docs/registry.md.

Aliases: ``champion`` (served), ``challenger`` (newest registered candidate), ``previous_champion``
(target of ``rollback``). Never imports prefect.

Modules: ``tags`` (alias/tag names, eval/cost/lineage tag encoding and decoding, error types), ``core``
(MLflow operations), ``policy`` (the pure promotion decision), ``views`` (tables and Markdown of a decision),
``gate`` (gathers the evidence, decides, records).
"""

from lexforge.registry.core import (
    ModelVersionInfo,
    Servable,
    audit_log,
    list_versions,
    promote,
    register_model,
    resolve_servable,
    rollback,
    weights_digest,
)
from lexforge.registry.gate import decide_promotion
from lexforge.registry.policy import PromotionDecision, evaluate_policy
from lexforge.registry.tags import PromotionRefused, RegistryError
from lexforge.registry.views import comparison_rows, decision_markdown

__all__ = [
    "ModelVersionInfo", "RegistryError", "Servable", "PromotionDecision", "PromotionRefused", "register_model",
    "decide_promotion", "evaluate_policy", "decision_markdown", "comparison_rows", "promote", "rollback",
    "resolve_servable", "list_versions", "audit_log", "weights_digest",
]
