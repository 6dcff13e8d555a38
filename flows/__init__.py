"""Thin Prefect flows, one per DVC stage. Importing this package sets offline, quiet defaults
(no analytics, no update checks, Prefect state under the project) before Prefect is imported."""

from flows._env import apply_env_defaults

apply_env_defaults()
