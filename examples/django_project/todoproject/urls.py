from django.urls import path
from todos import views

urlpatterns = [
    path("health", views.health),
    path("todos", views.todos),
    path("todos/<int:todo_id>", views.todo_detail),
    path("stats", views.stats),
]
