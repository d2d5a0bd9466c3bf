"""Celery configuration from ``FARM_*`` settings, loaded lazily by ``farm.celery_app``."""

from farm.celery_app import celery_config
from farm.settings import get_settings

globals().update(celery_config(get_settings()))
