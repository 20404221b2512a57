"""URLs of the dashboard: /batches/ and everything under it."""

from django.urls import path, register_converter

from batches.converters import BatchIdConverter
from batches.views import cancel, create, detail, listing, prices, saved_views, spending, time_zone

register_converter(BatchIdConverter, "batch_id")

app_name = "batches"
urlpatterns = [
    path("", listing.batch_list, name="list"),
    path("new/", create.batch_create, name="create"),
    path("cancel/", cancel.batch_bulk_cancel, name="bulk_cancel"),
    path("prices/", prices.price_list, name="prices"),
    path("spending/", spending.spending, name="spending"),
    path("spending.csv", spending.spending_csv, name="spending_csv"),
    path("time-zone/", time_zone.time_zone, name="time_zone"),
    path("views/", saved_views.saved_views, name="saved_views"),
    path("views/save/", saved_views.save_view, name="save_view"),
    path("views/<int:pk>/delete/", saved_views.delete_view, name="delete_view"),
    path("<batch_id:batch_id>/", detail.batch_detail, name="detail"),
    path("<batch_id:batch_id>/cancel/", cancel.batch_cancel, name="cancel"),
    path("<batch_id:batch_id>/files/<str:kind>/", detail.batch_file, name="file"),
]
