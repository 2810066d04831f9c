"""lexforge: self-hosted, workflow-orchestrated LLM fine-tuning for legal teams."""

__version__ = "0.1.0"
