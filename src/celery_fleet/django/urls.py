"""``path("", include("celery_fleet.django.urls"))`` serves the probes at the site root."""

from django.urls import path

from celery_fleet.django import views

app_name = "celery_fleet"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
