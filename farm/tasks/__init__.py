"""Celery tasks: thin wrappers that decode ids, call a plain function and return a small dict."""
