"""Flower, the Celery dashboard, set up for the farm (``farm flower``).

- Basic auth is required: the logins come from ``FARM_FLOWER_AUTH`` and reach Flower through
  its environment, never its command line (which ``ps`` shows). Without a login Flower does
  not start, unless ``--no-auth`` says so.
- Its task history is kept in ``FARM_FLOWER_DB`` (saved every minute and at exit).
- Task run times go into histogram buckets made for renders of seconds to an hour.
- Tasks show ``scene=… shot=…`` instead of a bare argument list; node workers are named
  after their GPU node (``node-a@host``, see :func:`farm.worker.run_node_worker`).

Flower's own Prometheus ``/metrics`` (Celery task and worker figures) stays where Flower
serves it; the farm's own metrics are ``farm exporter`` (docs/monitoring.md).
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any

from farm.errors import ConfigError
from farm.settings import Settings

# seconds: CPU tasks (assembly, scoring) in the first few, renders from 30 s to an hour
RUNTIME_BUCKETS = (1, 5, 15, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600, "inf")
SAVE_INTERVAL_MS = 60_000
LOGIN = re.compile(r"^[^:\s,]+:[^\s,]+$")

# task name -> names of its arguments, as shown in Flower
ARG_NAMES = {
    "farm.preview": ("scene", "shot", "binding"),
    "farm.final": ("scene", "shot", "binding"),
    "farm.fallback": ("scene", "shot", "binding"),
    "farm.score_shot": ("scene", "shot", "scoring"),  # the scoring token, not a take number
}
SCENE_LAST = ("farm.assemble_scene", "farm.score_scene")  # (chord results, scene id, run)


def parse_auth(text: str, variable: str = "FARM_FLOWER_AUTH") -> list[str]:
    """The ``user:password`` logins in ``variable`` (comma-separated)."""
    logins = [item.strip() for item in text.split(",") if item.strip()]
    for login in logins:
        if not LOGIN.match(login):
            user = login.split(":", 1)[0]
            raise ConfigError(
                f"{variable}: login {user!r} is not 'user:password' (no spaces or "
                f"commas; e.g. {variable}=operator:$(openssl rand -hex 16))"
            )
    return logins


def flower_env(settings: Settings, no_auth: bool = False) -> dict[str, str]:
    """Flower's options as its ``FLOWER_*`` environment variables."""
    logins = parse_auth(settings.flower_auth)
    if not logins and not no_auth:
        raise ConfigError(
            "Flower needs a login: set FARM_FLOWER_AUTH=user:password (anyone who reaches "
            "Flower can revoke tasks and stop workers), or pass --no-auth to run it open"
        )
    if logins and no_auth:
        raise ConfigError("--no-auth was given but FARM_FLOWER_AUTH is set: choose one")
    env = {
        "FLOWER_PERSISTENT": "true",
        "FLOWER_DB": str(settings.flower_db),
        "FLOWER_STATE_SAVE_INTERVAL": str(SAVE_INTERVAL_MS),
        "FLOWER_TASK_RUNTIME_METRIC_BUCKETS": ",".join(str(b) for b in RUNTIME_BUCKETS),
        "FLOWER_PURGE_OFFLINE_WORKERS": str(24 * 3600),
        "FLOWER_TASKS_COLUMNS": "name,uuid,state,result,args,received,started,runtime,worker",
    }
    if logins:
        env["FLOWER_BASIC_AUTH"] = ",".join(logins)
    return env


def describe_args(name: str, args: str) -> str | None:
    """``scene=… shot=…`` for a farm task's argument text (Celery's repr of its
    arguments, possibly cut short), or None to leave it as it is."""
    try:
        values = ast.literal_eval(args)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        values = None
    if isinstance(values, list | tuple):
        if name in ARG_NAMES and len(values) == len(ARG_NAMES[name]):
            return " ".join(f"{k}={v}" for k, v in zip(ARG_NAMES[name], values, strict=True))
        if name in SCENE_LAST and len(values) in (2, 3) and isinstance(values[1], str):
            run = f" run={values[2]}" if len(values) == 3 and values[2] is not None else ""
            return f"scene={values[1]}{run}"
        if name == "farm.close_shot" and values and isinstance(values[0], dict):
            return f"scene={values[0].get('scene_id')} shot={values[0].get('shot_id')}"
        return None
    # cut short: the ids are still near the start of a record
    scene = re.search(r"'scene_id': '([^']*)'", args)
    shot = re.search(r"'shot_id': '([^']*)'", args)
    if scene and name == "farm.close_shot" and shot:
        return f"scene={scene.group(1)} shot={shot.group(1)}"
    if scene and name in SCENE_LAST:
        return f"scene={scene.group(1)}"
    return None


def format_task(task: Any) -> Any:
    """Flower hook: show a farm task's arguments by name (``scene=s1 shot=intro …``)."""
    args = getattr(task, "args", None)
    if isinstance(args, str):
        described = describe_args(getattr(task, "name", None) or "", args)
        if described:
            task.args = described
    return task


def run_flower(settings: Settings, address: str, port: int, no_auth: bool = False) -> None:
    """Run Flower for the farm's Celery app until it is stopped (blocks)."""
    env = flower_env(settings, no_auth)
    for key in [k for k in os.environ if k.startswith("FLOWER_")]:
        del os.environ[key]  # only the farm's settings decide
    os.environ.update(env)
    settings.flower_db.parent.mkdir(parents=True, exist_ok=True)

    from flower.options import options

    from farm.celery_app import make_app

    options.format_task = format_task
    app = make_app(settings)
    app.start(["flower", f"--address={address}", f"--port={port}", "--conf=/dev/null"])
