from django.urls import path

from flights import views

app_name = "flights"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
    # Under /exports/ because deploy/nginx routes that prefix with buffering off and long
    # read timeouts.
    path("exports/flights/", views.FlightExport.as_view(), name="flight-export"),
    path(
        "exports/flights/filtered/",
        views.FilteredFlightExport.as_view(),
        name="flight-export-filtered",
    ),
    path("exports/weather/", views.WeatherExport.as_view(), name="weather-export"),
    # Queues a background export (202 + the job's status URL); needs a signed-in user.
    path(
        "exports/flights/background/",
        views.BackgroundFlightExport.as_view(),
        name="flight-export-background",
    ),
    # Fails on purpose mid-stream; 404 unless STREAMEXPORT_EXAMPLE_SELF_TEST is on.
    path("exports/self-test/", views.SelfTestExport.as_view(), name="self-test-export"),
]
