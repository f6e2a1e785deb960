from django.contrib import admin

from gpus.models import Worker


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Every worker slot on every host: read-only, the workers write these rows themselves."""

    list_display = ("host", "device", "queue", "gpu_name", "last_seen_at", "job", "leased_at", "pid", "fake")
    list_filter = ("host", "device", "fake")
    search_fields = ("host", "gpu_name", "job__id")
    readonly_fields = [f.name for f in Worker._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
