from django.contrib import admin
from django.urls import include, path

from jobs import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("api/", include("jobs.api_urls")),
    path("admin/", admin.site.urls),
    path("", include("jobs.urls")),
]
