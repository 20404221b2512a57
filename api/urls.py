"""/api/v1/: the JSON API (token or session), its OpenAPI document (signed in) and its documentation page."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from api import views
from api.endpoints import api

patterns = api.urls[0]
app_name = "api"
for pattern in patterns:
    if pattern.name != "openapi-json":  # the schema is for signed-in users; the API authenticates each call itself
        login_not_required(pattern.callback)

urlpatterns = [path("docs", views.docs, name="docs"), *patterns]
