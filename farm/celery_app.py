"""The Celery application and the one configuration every farm process loads.

Workers, the CLI, Flower and the tests all build the app from the same
:func:`celery_config`, so they agree on the visibility timeout (the shortest one of any
connected process wins on Redis), acknowledgements, prefetch and serialisation.
See docs/architecture.md for why each value is what it is.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from farm.settings import Settings, get_settings

TASK_MODULES = ["farm.tasks.render", "farm.tasks.scene"]


def celery_url(settings: Settings) -> str:
    """``FARM_REDIS_URL`` as Celery (kombu and the result backend) spells it: a sentinel
    URL becomes one ``sentinel://`` URL per sentinel, joined by ``;``, each with the Redis
    servers' credentials and database; any other URL is used as it is."""
    sentinel = settings.redis_sentinel
    if sentinel is None:
        return settings.redis_url
    netloc = settings.redis_url.partition("://")[2].partition("/")[0]
    userinfo, at, _ = netloc.rpartition("@")
    return ";".join(
        f"sentinel://{userinfo}{at}{f'[{host}]' if ':' in host else host}:{port}/{sentinel.db}"
        for host, port in sentinel.sentinels
    )


def redis_options(settings: Settings) -> dict[str, Any]:
    """The Celery settings that say how to reach Redis: URLs, TLS and Sentinel."""
    transport: dict[str, Any] = {}
    if settings.redis_sentinel is not None:
        transport = {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": settings.redis_sentinel_kwargs(),
        }
    return {
        "broker_url": celery_url(settings),
        "result_backend": celery_url(settings),
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        # TLS: the server is always verified (never CERT_NONE); False: no TLS
        "broker_use_ssl": settings.redis_ssl() or False,
        "redis_backend_use_ssl": settings.redis_ssl() or False,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for long GPU renders on a Redis broker."""
    redis = redis_options(settings)
    transport = {
        **redis["broker_transport_options"],
        # must exceed the longest render, or Redis hands a running render to a 2nd worker
        "visibility_timeout": settings.visibility_timeout,
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
    }
    return {
        **redis,
        "broker_transport_options": transport,
        "result_backend_transport_options": {
            **redis["result_backend_transport_options"],
            "visibility_timeout": settings.visibility_timeout,
        },
        "broker_connection_retry_on_startup": True,
        # JSON only: no pickle anywhere
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # a render is acknowledged when it ends; a killed worker's render is redelivered
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_time_limit": settings.render_time_limit,
        "task_soft_time_limit": max(1, settings.render_time_limit - 30),
        "task_track_started": True,
        "task_default_queue": settings.cpu_queue,
        "task_default_priority": 4,
        "task_routes": {
            "farm.assemble_scene": {"queue": settings.cpu_queue},
            "farm.close_shot": {"queue": settings.cpu_queue},
            "farm.collect": {"queue": settings.cpu_queue},
            "farm.score_scene": {"queue": settings.cpu_queue},
            "farm.score_shot": {"queue": settings.cpu_queue},
        },
        # Flower and `farm status` see task events
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": settings.result_expires,
        "result_extended": True,
        "worker_hijack_root_logger": False,
    }


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (default: the environment), lazily."""
    app = Celery("farm", include=TASK_MODULES)
    if settings is not None:
        app.conf.update(celery_config(settings))
    else:
        app.config_from_object("farm.celeryconfig")
    return app


app = make_app()

__all__ = ["app", "celery_config", "celery_url", "get_settings", "make_app"]
