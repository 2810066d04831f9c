"""Thin Prefect tasks: one pipeline step each, calling the lexforge engine and publishing its result to the
Prefect UI (artifacts, logs). No business logic lives here."""
