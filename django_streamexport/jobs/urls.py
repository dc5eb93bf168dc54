"""URLs of background exports.

Include them: ``path("exports/jobs/", include("django_streamexport.jobs.urls"))``.
"""

from django.urls import path

from django_streamexport.jobs import views

app_name = "streamexport_jobs"

urlpatterns = [
    path("<uuid:job_id>/", views.status, name="status"),
    path("<uuid:job_id>/download/", views.download, name="download"),
    path("<uuid:job_id>/cancel/", views.cancel, name="cancel"),
]
