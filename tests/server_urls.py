"""URLs of the test server: the suite's URLs plus the fault views."""

from django.http import HttpResponse
from django.urls import path

from tests import fault_views
from tests.urls import urlpatterns as base_urlpatterns

urlpatterns = [
    *base_urlpatterns,
    path("faults/slow-read/", fault_views.SlowReadExport.as_view()),
    path("faults/kill/", fault_views.KillableExport.as_view()),
    path("faults/statement-timeout/", fault_views.StatementTimeoutExport.as_view()),
    path("faults/row-limit/", fault_views.RowLimitExport.as_view()),
    path("faults/load/", fault_views.LoadExport.as_view()),
    path("faults/wide-slow-read/", fault_views.WideSlowReadExport.as_view()),
    path("faults/wide-slow-copy/", fault_views.WideSlowCopyExport.as_view()),
    # A small request without database, answered beside exports (test_load).
    path("ping/", lambda request: HttpResponse("ok\n", content_type="text/plain")),
]
