"""simsched's settings with bench/floor_urls.py as the URLconf: the same server plus two empty
200s, to measure the framework floor (bench/hot_path.py serves it with bench/ on PYTHONPATH)."""

from simsched.settings import *  # noqa: F403

ROOT_URLCONF = "floor_urls"
