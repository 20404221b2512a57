"""URLs under /batches/<batch_id>/results/: the results table, its exports, and one page per request."""

from django.urls import path

from results import views

app_name = "results"
urlpatterns = [
    path("", views.results_page, name="list"),
    path("export.csv", views.results_export, {"fmt": "csv"}, name="export_csv"),
    path("export.jsonl", views.results_export, {"fmt": "jsonl"}, name="export_jsonl"),
    path("files/<str:kind>.jsonl", views.results_file, name="file"),
    # No trailing slash: a request page's URL always ends in one, so no custom_id can be taken for this.
    path("lines/<int:position>/<str:side>.jsonl", views.raw_line, name="raw_line"),
    path("<path:custom_id>/", views.request_page, name="request"),
]
