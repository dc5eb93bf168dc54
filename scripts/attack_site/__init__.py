"""The example project with extra export routes for scripts/attack.py.

Run as the example project is (``gunicorn --chdir example_project``) with ``scripts/`` on the
import path and ``DJANGO_SETTINGS_MODULE=attack_site.settings``.  The extra routes, under
``/attack/``, are the example project's flights export with one knob changed each, so every
reader and every guard can be reached from a client: COPY mode, keyset mode, a statement
timeout, an idle-in-transaction timeout and a row limit.
"""
