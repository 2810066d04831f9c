"""GPU sizing and cost planning for serving and fine-tuning (pure Python; never imports prefect or torch).

    plan_serving(model, precision=None, context_len=32768, concurrency=16, gpu="B200") -> ServePlan
    plan_training(spec, token_stats=None, gpu=None) -> TrainPlan
    plan_finetune(model, method="lora", strategy=None, ...) -> TrainPlan   (no JobSpec needed)
    check_fits_or_raise(plan) -> plan, or PlanError with the reasons

See docs/planner.md for the formulas and assumptions.
"""

from lexforge.plan.catalog import GPU, ModelArch, PlanError, arch_from_hf_config, gpu_catalog, get_gpu, model_catalog, resolve_model
from lexforge.plan.serving import ServePlan, kv_bytes_per_sequence, plan_serving
from lexforge.plan.training import TrainPlan, check_fits_or_raise, memory_per_gpu, plan_finetune, plan_training

__all__ = [
    "GPU", "ModelArch", "PlanError", "ServePlan", "TrainPlan", "arch_from_hf_config", "check_fits_or_raise",
    "get_gpu", "gpu_catalog", "kv_bytes_per_sequence", "memory_per_gpu", "model_catalog", "plan_finetune",
    "plan_serving", "plan_training", "resolve_model",
]
