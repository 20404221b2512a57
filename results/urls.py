"""URLs under /batches/<batch_id>/results/: the results table, its exports, and one page per request.

A request's page is addressed by its row's position, never by its custom_id: a custom_id is anything a file said
("../../admin/", "..", "a/b?c#d", 512 characters), and no quoting makes every one of them a path segment that
browsers and proxies leave alone."""

from django.urls import path

from results import views

app_name = "results"
urlpatterns = [
    path("", views.results_page, name="list"),
    path("export.csv", views.results_export, {"fmt": "csv"}, name="export_csv"),
    path("export.jsonl", views.results_export, {"fmt": "jsonl"}, name="export_jsonl"),
    path("files/<str:kind>.jsonl", views.results_file, name="file"),
    path("rows/<int:position>/", views.request_page, name="request"),
    # One side of a row ("input" or "result") as its raw line, streamed: how a line too long to show is read.
    path("rows/<int:position>/<str:side>.jsonl", views.raw_line, name="raw_line"),
    # A custom_id's request page, by lookup: the error groups' examples (?custom_id=), and links to
    # <custom_id>/ from before rows were linked by position.
    path("rows/", views.request_of, name="request_of"),
    path("<path:custom_id>/", views.request_of, name="request_of_custom_id"),
]
