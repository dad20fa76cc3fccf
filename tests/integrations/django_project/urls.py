from django.urls import path

from . import views

urlpatterns = [
    path("users/", views.users),
    path("users/<int:pk>/", views.user_detail),
    path("fail-after-write/", views.fail_after_write),
    path("conflict-after-write/", views.conflict_after_write),
    path("session-info/", views.session_info),
    path("duplicate/", views.duplicate),
    path("sync/users/", views.sync_create_user),
    path("sync/request-session/", views.sync_view_using_request_session),
    path("async-calls-sync/", views.async_view_calling_sync_helper),
    path("engine-id/", views.async_engine_id),
    path("two-databases/", views.two_databases),
    path("wait-for-disconnect/", views.wait_for_disconnect),
]
