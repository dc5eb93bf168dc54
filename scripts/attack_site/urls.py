"""The example project's URLs plus the attack routes (attack_site.views) under /attack/."""

from config.urls import urlpatterns as example_urlpatterns
from django.urls import path

from attack_site import views

urlpatterns = [
    path("attack/flights/copy/", views.CopyFlightExport.as_view()),
    path("attack/flights/keyset/", views.KeysetFlightExport.as_view()),
    path("attack/flights/slow/", views.SlowFlightExport.as_view()),
    path("attack/flights/slow-copy/", views.SlowCopyFlightExport.as_view()),
    path("attack/flights/idle/", views.IdleFlightExport.as_view()),
    path("attack/flights/idle-copy/", views.IdleCopyFlightExport.as_view()),
    path("attack/flights/row-limit/", views.RowLimitFlightExport.as_view()),
    path("attack/flights/row-limit-keyset/", views.RowLimitKeysetFlightExport.as_view()),
    *example_urlpatterns,
]
