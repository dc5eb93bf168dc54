#!/usr/bin/env python
"""Run administrative tasks for the django-streamexport example project."""

import os
import sys
from pathlib import Path


def main() -> None:
    # Put this directory first on sys.path, so `config` and `flights` import the same way
    # whether manage.py is run from here, from the repository root or by absolute path.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
