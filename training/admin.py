import json

from django.contrib import admin, messages
from django.utils.html import format_html

from mistudio.errors import ServiceError
from training import services
from training.models import Checkpoint, TrainingJob


def _pretty(document):
    return format_html("<pre>{}</pre>", json.dumps(document, indent=2)) if document else "-"


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    extra = 0
    can_delete = False
    fields = ("epoch", "step", "path", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "progress_percent", "model_name", "layer_number", "current_loss",
                    "owner", "created_at", "completed_at")
    list_filter = ("status", "architecture", "phase", "quantization", "created_at")
    search_fields = ("id", "model_name", "corpus__name", "owner__username", "message")
    date_hierarchy = "created_at"
    actions = ["cancel_jobs"]
    inlines = [CheckpointInline]
    fieldsets = (
        (None, {"fields": ("id", "owner", "status", "phase", "progress", "message", "error", "device")}),
        ("Parameters", {"fields": ("model_name", "corpus", "activations_file", "layer_number", "hidden_dim",
                                   "sparsity_coeff", "learning_rate", "batch_size", "sae_batch_tokens",
                                   "max_epochs", "min_loss", "gpu_id", "max_sequence_length", "quantization",
                                   "architecture", "k", "target_l0")}),
        ("Metrics", {"fields": ("current_epoch", "current_loss", "eta_s", "pretty_evaluation",
                                "pretty_training_stats", "pretty_model_info", "memory_check")}),
        ("Artifacts", {"fields": ("model_path", "activations_path", "metadata_path", "pretty_exports")}),
        ("Times", {"fields": ("created_at", "started_at", "completed_at", "cancel_requested_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        # Jobs are made through the API or the CLI, which validate them; here they are read.
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, job):
        return f"{job.progress:.0%}"

    @admin.display(description="training stats")
    def pretty_training_stats(self, job):
        return _pretty(job.training_stats)

    @admin.display(description="model info")
    def pretty_model_info(self, job):
        return _pretty(job.model_info)

    @admin.display(description="evaluation")
    def pretty_evaluation(self, job):
        return _pretty(job.evaluation)

    @admin.display(description="exports")
    def pretty_exports(self, job):
        return _pretty(job.exports)

    @admin.action(description="Cancel selected jobs", permissions=["view"])
    def cancel_jobs(self, request, queryset):
        done = 0
        for job in queryset:
            try:
                services.job_cancel(job)
                done += 1
            except ServiceError as err:
                self.message_user(request, err.message, messages.WARNING)
        if done:
            self.message_user(request, f"Cancelled or asked to stop {done} job(s).", messages.SUCCESS)
