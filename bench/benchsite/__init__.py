"""A bench-only Django project: the real settings plus two baseline views (``bench/web.py``)."""
