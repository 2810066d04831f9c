"""OpenAI-compatible fine-tuning API on the self-hosted platform (issue #9).

Teams that script fine-tuning with the official ``openai`` SDK (``files.create`` ->
``fine_tuning.jobs.create`` -> poll -> ``chat.completions.create(model=job.fine_tuned_model)``) point
``base_url`` at this service instead of a managed provider. Files live in the lexforge store under
generated ids, jobs are Prefect flow runs of the ``retrain`` deployment, and finished adapters are
registered with the Ray Serve app under the job's ``fine_tuned_model`` name.

``create_app(settings)`` builds the FastAPI app; ``lexforge api`` runs it with uvicorn.
"""

from api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]


def create_app(settings: ApiSettings | None = None):
    from api.app import create_app as _create

    return _create(settings)
