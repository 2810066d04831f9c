"""GRPO: rollouts (:mod:`.rollout`, :mod:`.rollout_vllm`), the objective (:mod:`.objective`) and the recipe
(:mod:`.recipe`) the training loop runs for ``stage=grpo``. Imported lazily by :mod:`lexforge.train.recipes`."""
