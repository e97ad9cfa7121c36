from django.urls import path

from jobs import views

app_name = "api"

urlpatterns = [
    path("jobs/", views.api_jobs, name="jobs"),
    path("jobs/<str:job_id>", views.api_job, name="job"),
    path("users/", views.api_users, name="users"),
    path("openapi.yaml", views.openapi_spec, name="openapi"),
    path("docs/", views.api_docs, name="docs"),
]
