from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("celery_fleet.django.urls")),
    path("api/", include("jobs.api_urls")),
    path("admin/", admin.site.urls),
    path("", include("jobs.urls")),
]
