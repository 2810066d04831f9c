"""Serving: a Ray Serve application running vLLM (AsyncLLM) behind an OpenAI-compatible API.

- :mod:`lexforge.serve.settings`  -- ``ServeSettings`` (what one server runs), built from the job spec.
- :mod:`lexforge.serve.adapters`  -- where the champion adapter comes from (registry, pointer file, fixed dir)
  and the name -> LoRA table that makes hot promotion an atomic swap.
- :mod:`lexforge.serve.engine`    -- the vLLM engine wrapper (prompts, sampling, LoRA requests).
- :mod:`lexforge.serve.app`       -- the FastAPI routes + Ray Serve deployment; ``build_app`` / ``run_server``.
- :mod:`lexforge.serve.cli`       -- ``lexforge serve``.
"""

from lexforge.serve.settings import ServeSettings, settings_from_spec

__all__ = ["ServeSettings", "settings_from_spec"]
