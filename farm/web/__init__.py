"""`farm web`: the farm in a browser (docs/web.md).

- :mod:`farm.web.auth`: logins (``FARM_WEB_AUTH``), sessions in Redis, CSRF tokens;
- :mod:`farm.web.views`: what each page shows, from the functions the CLI uses;
- :mod:`farm.web.app`: the aiohttp application (pages, actions, live updates, files).
"""
