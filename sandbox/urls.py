"""The sandbox's OpenAI-compatible routes (no trailing slashes, as on the real API), mounted at /sandbox/: the API
as OpenAI serves it at /sandbox/v1/, and as Azure OpenAI's v1 API serves it at /sandbox/openai/v1/ (the key in an
`api-key` header; see views.py)."""

from django.urls import include, path, re_path

from sandbox import views

api_patterns = [
    path("files", views.file_collection, name="files"),
    path("files/<str:file_id>", views.file_detail, name="file"),
    path("files/<str:file_id>/content", views.file_content, name="file-content"),
    path("batches", views.batch_collection, name="batches"),
    path("batches/<str:batch_id>", views.batch_detail, name="batch"),
    path("batches/<str:batch_id>/cancel", views.batch_cancel, name="batch-cancel"),
    re_path(r"^(?P<path>.*)$", views.unknown_route, name="unknown"),
]

app_name = "sandbox"
urlpatterns = [
    path("v1/", include(api_patterns), {"flavour": "openai"}),
    path("openai/v1/", include((api_patterns, "azure"), namespace="azure"), {"flavour": "azure"}),
]
