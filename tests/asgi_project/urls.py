"""Views of the uvicorn-served test project.

``records/`` is an ordinary export view; ``sync/`` hands Django a sync
iterator (what the app must never do under ASGI) to show the warning filter
bites; ``status/`` reports the server's peak RSS and each export's outcome.
"""

import resource

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from django_streamexport.plan import build_plan
from django_streamexport.responses import export_response
from django_streamexport.streaming import ExportStream
from django_streamexport.views import StreamingExportView
from tests.testapp.models import Record

FIELDS = ["id", "title", "count", "day"]
#: Every stream the server made, in order (one server per test module).
STREAMS: list[ExportStream] = []


class RecordedStream(ExportStream):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        STREAMS.append(self)


class RecordExport(StreamingExportView):
    model = Record
    export_fields = FIELDS
    stream_class = RecordedStream
    filename = "records"


def sync_iterator_export(request: HttpRequest) -> HttpResponse:
    plan = build_plan(Record.objects.all(), fields=FIELDS, format="csv", filename="records")
    return export_response(RecordedStream(plan))  # no request: a sync iterator


def status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            # Linux reports ru_maxrss in KiB.
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "outcomes": [stream.outcome for stream in STREAMS],
            "rows": [stream.rows for stream in STREAMS],
        }
    )


urlpatterns = [
    path("records/", RecordExport.as_view()),
    path("sync/", sync_iterator_export),
    path("status/", status),
]
