"""URLs under /batches/<batch_id>/: retrying lines of a batch, and the final results of its job."""

from django.urls import path

from retries import views

app_name = "retries"
urlpatterns = [
    path("retry/", views.retry_confirm, name="confirm"),
    path("final/", views.final_results, name="final"),
    path("final.csv", views.final_export, {"fmt": "csv"}, name="final_csv"),
    path("final.jsonl", views.final_export, {"fmt": "jsonl"}, name="final_jsonl"),
    path("job/cancel/", views.cancel_job, name="cancel_job"),
]
