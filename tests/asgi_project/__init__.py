"""A small Django project served by a real uvicorn in tests/test_asgi.py."""
