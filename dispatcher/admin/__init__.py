"""The admin HTTP API: ``create_app(deps)`` and ``serve()``; the only user of ``aiohttp.web``."""
