"""The sandbox's OpenAI-compatible routes, mounted at /sandbox/v1/."""

app_name = "sandbox"
urlpatterns = []
