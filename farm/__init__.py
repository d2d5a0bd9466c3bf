"""farm: a distributed render farm for AI video generation.

Scenes (JSON) are planned into shot jobs, rendered on GPU nodes (ComfyUI or WanGP,
real or emulated) through Celery queues on Redis, assembled into a scene video and scored.
"""

__version__ = "0.1.0"
