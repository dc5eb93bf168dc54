"""tests/urls.py plus admin sites for variants of RecordAdmin (``pytest.mark.urls``).

``/recording-admin/`` serves :class:`~tests.testapp.admin.RecordingRecordAdmin`,
``/keyset-admin/`` :class:`~tests.testapp.admin.KeysetRecordAdmin`,
``/list-display-admin/`` :class:`~tests.testapp.admin.ListDisplayRecordAdmin` (a model is
registered once per site, so each variant has a site of its own).
"""

from django.contrib import admin
from django.urls import path

from tests.testapp.admin import KeysetRecordAdmin, ListDisplayRecordAdmin, RecordingRecordAdmin
from tests.testapp.models import Record
from tests.urls import urlpatterns as base_urlpatterns

recording_site = admin.AdminSite(name="recording_admin")
recording_site.register(Record, RecordingRecordAdmin)
keyset_site = admin.AdminSite(name="keyset_admin")
keyset_site.register(Record, KeysetRecordAdmin)
list_display_site = admin.AdminSite(name="list_display_admin")
list_display_site.register(Record, ListDisplayRecordAdmin)

urlpatterns = [
    *base_urlpatterns,
    path("recording-admin/", recording_site.urls),
    path("keyset-admin/", keyset_site.urls),
    path("list-display-admin/", list_display_site.urls),
]
