"""URLs under /webhooks/: the OpenAI API's deliveries, one receiver per connection (the default one's also at the
address it had before connections existed)."""

from django.urls import path

from webhooks import views

app_name = "webhooks"
urlpatterns = [
    path("openai/", views.openai_webhook, name="openai"),
    path("openai/<slug:connection>/", views.openai_webhook, name="openai_connection"),
]
