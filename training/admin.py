import json

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.urls import reverse
from django.utils.html import format_html

from mistudio.errors import ServiceError
from training import services, sweeps
from training.models import Checkpoint, Sweep, TrainingJob


def _pretty(document):
    return format_html("<pre>{}</pre>", json.dumps(document, indent=2)) if document else "-"


class CancelPermission:
    """Cancelling changes a job: the actions need the model's change permission, not only view.
    (has_change_permission is the form's, read-only for everyone, so it cannot be the test.)"""

    def has_cancel_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    extra = 0
    can_delete = False
    fields = ("epoch", "step", "path", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(TrainingJob)
class TrainingJobAdmin(CancelPermission, admin.ModelAdmin):
    list_display = ("id", "page_link", "status_badge", "progress_bar", "model_name", "layer_number",
                    "current_loss", "owner", "worker_host", "created_at", "completed_at")
    list_filter = ("status", "sweep", "architecture", "hook_point", "packing", "cache_activations", "phase", "quantization", "worker_host", "created_at")
    search_fields = ("id", "model_name", "corpus__name", "owner__username", "message")
    date_hierarchy = "created_at"
    actions = ["cancel_jobs"]
    inlines = [CheckpointInline]
    fieldsets = (
        (None, {"fields": ("id", "page_link", "owner", "status", "phase", "progress", "message", "error",
                           "device", "sweep", "sweep_settings")}),
        ("Parameters", {"fields": ("model_name", "corpus", "activations_file", "layer_number", "hidden_dim",
                                   "sparsity_coeff", "learning_rate", "batch_size", "sae_batch_tokens",
                                   "max_epochs", "min_loss", "gpu_id", "max_sequence_length", "quantization",
                                   "architecture", "k", "target_l0", "matryoshka_widths", "hook_point", "exclude_special_tokens",
                                   "prepend_bos", "packing", "training_tokens", "cache_activations")}),
        ("Metrics", {"fields": ("current_epoch", "current_loss", "eta_s", "pretty_evaluation",
                                "pretty_training_stats", "pretty_model_info", "memory_check", "pretty_disk_plan")}),
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

    class Media:
        # The badges' colours and the bars (the admin does not load the site's stylesheet); no style
        # attributes, which the Content-Security-Policy refuses: a bar's width is set by admin.js.
        css = {"all": ["training/admin.css"]}
        js = ["training/admin.js"]

    @admin.display(description="status", ordering="status")
    def status_badge(self, job):
        return format_html('<span class="status-badge status-{}">{}</span>', job.status, job.get_status_display())

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, job):
        percent = round(min(max(job.progress, 0.0), 1.0) * 100)
        return format_html('<span class="progress-bar"><span data-share="{}"></span></span> {}%', percent, percent)

    @admin.display(description="page")
    def page_link(self, job):
        return format_html('<a class="job-page-link" href="{}">View</a>', reverse("job-page", args=[job.id]))

    @admin.display(description="training stats")
    def pretty_training_stats(self, job):
        return _pretty(job.training_stats)

    @admin.display(description="model info")
    def pretty_model_info(self, job):
        return _pretty(job.model_info)

    @admin.display(description="evaluation")
    def pretty_evaluation(self, job):
        return _pretty(job.evaluation)

    @admin.display(description="disk plan")
    def pretty_disk_plan(self, job):
        return _pretty(job.disk_plan)

    @admin.display(description="exports")
    def pretty_exports(self, job):
        return _pretty(job.exports)

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
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


class MemberInline(admin.TabularInline):
    model = TrainingJob
    extra = 0
    can_delete = False
    fields = ("id", "layer_number", "hook_point", "sweep_settings", "status", "progress", "message")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Sweep)
class SweepAdmin(CancelPermission, admin.ModelAdmin):
    """Sweeps, read (they are made through the API, the form or the CLI), each with its members; the
    action cancels every member that has not ended."""

    list_display = ("id", "page_link", "model_name", "corpus", "layers", "hook_points", "owner", "created_at")
    search_fields = ("id", "model_name", "corpus__name", "owner__username")
    date_hierarchy = "created_at"
    actions = ["cancel_sweeps"]
    inlines = [MemberInline]
    readonly_fields = ("id", "page_link", "owner", "model_name", "corpus", "layers", "hook_points", "members",
                       "lm_forward_batches", "tokens_extracted", "extraction_seconds", "disk_plan", "created_at",
                       "enqueued_at")
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    @admin.display(description="page")
    def page_link(self, sweep):
        return format_html('<a class="sweep-page-link" href="{}">View</a>', reverse("sweep-page", args=[sweep.id]))

    @admin.action(description="Cancel selected sweeps", permissions=["cancel"])
    def cancel_sweeps(self, request, queryset):
        for sweep in queryset:
            try:
                sweeps.sweep_cancel(sweep)
            except ServiceError as err:
                self.message_user(request, err.message, messages.WARNING)
