"""A reusable Django app: ``/healthz`` and ``/readyz`` for any project on celery-fleet.

Add ``"celery_fleet.django"`` to ``INSTALLED_APPS`` and, in the root URLconf::

    path("", include("celery_fleet.django.urls")),
"""
