from django.contrib import admin
from django.urls import include, path

from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("records/export/", views.RecordExport.as_view(), name="record-export"),
    path(
        "records/export/background/",
        views.BackgroundRecordExport.as_view(),
        name="record-export-background",
    ),
    path("exports/jobs/", include("django_streamexport.jobs.urls")),
]
