"""Environment defaults that keep Prefect and DVC offline and quiet, set before they import."""

from __future__ import annotations

import logging
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "DVC_NO_UPDATER": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLI_PROMPT": "false",
    "PREFECT_LOGGING_LOG_PRINTS": "true",
}


class CompletedTaskRuns(logging.Filter):
    """Drops the task-run logger's "Finished in state Completed()" line (one per shard task: most of a
    run's log). Failures (logged at ERROR), task prints and warnings pass; flow runs keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not str(record.msg).startswith("Finished in state Completed")


def quiet_task_runs() -> None:
    """Attach `CompletedTaskRuns` to Prefect's `prefect.task_runs` logger (Prefect's logging config keeps a
    logger's filters; no setting lowers one message only: PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL=WARNING
    would also hide the tasks' own INFO lines). LMFORGE_TASK_LOGS=1 keeps every line."""
    logger = logging.getLogger("prefect.task_runs")
    if os.environ.get("LMFORGE_TASK_LOGS") != "1" and not any(isinstance(f, CompletedTaskRuns) for f in logger.filters):
        logger.addFilter(CompletedTaskRuns())


def apply_env_defaults() -> None:
    """Set each default unless the user already chose a value; quiet the per-task completion lines."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".prefect"))
    quiet_task_runs()
