"""Prefect flows of lexforge. Each takes a job spec path (+ optional ``dotted.key=value`` overrides), loads the
JobSpec once and runs thin tasks (tasks/) that call the engine (lexforge/)."""
