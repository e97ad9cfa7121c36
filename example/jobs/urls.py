from django.urls import path

from jobs import views

app_name = "jobs"

urlpatterns = [
    path("", views.home, name="home"),
    path("export/", views.export, name="export"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="detail"),
    path("jobs/<uuid:job_id>/download/", views.job_download, name="download"),
    path("users/", views.user_list, name="users"),
]
