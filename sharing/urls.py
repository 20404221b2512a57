"""URLs of share links: the read-only pages under /shared/<token>/, and making and revoking links under a batch."""

from django.urls import path

from sharing import views

app_name = "sharing"
urlpatterns = [
    path("shared/<str:token>/", views.shared_batch, name="batch"),
    path("shared/<str:token>/results/", views.shared_results, name="results"),
    path("shared/<str:token>/results/rows/<int:position>/", views.shared_row, name="row"),
    path("shared/<str:token>/results/export.csv", views.shared_export, {"fmt": "csv"}, name="export_csv"),
    path("shared/<str:token>/results/export.jsonl", views.shared_export, {"fmt": "jsonl"}, name="export_jsonl"),
    # Ends with a slash, so that a link copied without its last "/" is redirected to it (APPEND_SLASH).
    path("shared/<path:rest>/", views.not_shared, name="other"),
    path("batches/<batch_id:batch_id>/share-links/", views.make_link, name="make"),
    path("batches/<batch_id:batch_id>/share-links/<int:pk>/revoke/", views.revoke_link, name="revoke"),
]
