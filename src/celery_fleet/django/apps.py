from django.apps import AppConfig


class CeleryFleetConfig(AppConfig):
    name = "celery_fleet.django"
    label = "celery_fleet"
    verbose_name = "celery-fleet"
