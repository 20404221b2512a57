"""The sandbox's OpenAI-compatible routes, mounted at /sandbox/v1/ (no trailing slashes, as on the real API)."""

from django.urls import path, re_path

from sandbox import views

app_name = "sandbox"
urlpatterns = [
    path("files", views.file_collection, name="files"),
    path("files/<str:file_id>", views.file_detail, name="file"),
    path("files/<str:file_id>/content", views.file_content, name="file-content"),
    path("batches", views.batch_collection, name="batches"),
    path("batches/<str:batch_id>", views.batch_detail, name="batch"),
    path("batches/<str:batch_id>/cancel", views.batch_cancel, name="batch-cancel"),
    re_path(r"^(?P<path>.*)$", views.unknown_route, name="unknown"),
]
