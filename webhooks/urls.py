"""URLs under /webhooks/: the OpenAI API's deliveries (one receiver while there is one connection)."""

from django.urls import path

from webhooks import views

app_name = "webhooks"
urlpatterns = [
    path("openai/", views.openai_webhook, name="openai"),
]
