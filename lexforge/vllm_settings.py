"""What every vLLM engine lexforge starts has in common (evaluation, serving, GRPO rollouts)."""

from __future__ import annotations


def host_logging_config():
    """A vLLM ``LoggingConfig`` that leaves the host process's logging as it is.

    By default vLLM applies ``logging.config.dictConfig`` when an engine starts. That shuts down every handler
    the process already has; inside a Prefect flow run one of them is Prefect's ``APILogHandler``, whose shutdown
    waits for its worker thread while holding the logging lock the worker thread needs: the flow run deadlocks.
    vLLM's loggers then log through the host's handlers (files, Prefect, Ray) like every other library."""
    from vllm.config.logging import LoggingConfig

    return LoggingConfig(configure_logging=False)
