from django.urls import path

from notifications import views

app_name = "notifications"
urlpatterns = [
    path("", views.notifications_page, name="page"),
    path("destinations/add/", views.add_destination, name="add_destination"),
    path("destinations/<int:pk>/delete/", views.delete_destination, name="delete_destination"),
    path("destinations/<int:pk>/resume/", views.resume_destination, name="resume_destination"),
    path("destinations/<int:pk>/test/", views.test_destination, name="test_destination"),
    path("subscriptions/add/", views.add_subscription, name="add_subscription"),
    path("subscriptions/<int:pk>/delete/", views.delete_subscription, name="delete_subscription"),
    path("watch/<int:pk>/", views.watch, name="watch"),
]
