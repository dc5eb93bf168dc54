"""The example project's settings (config.settings, read from the same environment) with the
attack routes (attack_site.urls) added."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "attack_site.urls"
