from django.urls import include, path

from benchsite import views

urlpatterns = [
    path("bench/bare", views.bare, name="bench-bare"),
    path("bench/insert", views.insert, name="bench-insert"),
    path("bench/publish", views.publish, name="bench-publish"),
    path("bench/publish-plain", views.publish_plain, name="bench-publish-plain"),
    path("bench/textbook", views.textbook, name="bench-textbook"),
    path("", include("fleetsite.urls")),
]
