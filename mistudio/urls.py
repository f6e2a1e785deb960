from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from corpora import pages as corpus_pages
from corpora.views import UploadView
from gpus.views import GpuStatusView, HealthView
from mistudio.token_views import TokenListView, TokenRevokeView, tokens_page
from training.pages import jobs as pages
from training.pages import sweeps as sweep_pages
from training.api import sweeps as sweep_views
from training.api import jobs as views

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("gpu/status", GpuStatusView.as_view(), name="gpu-status"),
    path("api/v1/train", views.TrainView.as_view(), name="train"),
    path("api/v1/train/<str:job_id>/status", views.JobStatusView.as_view(), name="job-status"),
    path("api/v1/train/<str:job_id>/result", views.JobResultView.as_view(), name="job-result"),
    path("api/v1/train/<str:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("api/v1/train/<str:job_id>/download", views.JobDownloadView.as_view(), name="job-download"),
    path("api/v1/train/<str:job_id>/curves", views.JobCurvesView.as_view(), name="job-curves"),
    path("api/v1/train/<str:job_id>/features", views.FeatureListView.as_view(), name="job-features"),
    path("api/v1/train/<str:job_id>/features/<str:index>", views.FeatureDetailView.as_view(), name="job-feature"),
    path("api/v1/jobs", views.JobListView.as_view(), name="jobs"),
    path("api/v1/sweeps", sweep_views.SweepCreateView.as_view(), name="sweeps"),
    path("api/v1/sweeps/<str:sweep_id>", sweep_views.SweepView.as_view(), name="sweep"),
    path("api/v1/sweeps/<str:sweep_id>/cancel", sweep_views.SweepCancelView.as_view(), name="sweep-cancel"),
    # Model ids hold a slash; the WSGI server decodes %2F before routing, so both spellings land here.
    re_path(r"^api/v1/check-memory/(?P<model_name>[\s\S]+)$", views.CheckMemoryView.as_view(), name="check-memory"),
    path("api/v1/validate-model", views.ValidateModelView.as_view(), name="validate-model"),
    path("api/v1/upload", UploadView.as_view(), name="upload"),
    path("api/v1/tokens", TokenListView.as_view(), name="tokens"),
    path("api/v1/tokens/<str:token_key>", TokenRevokeView.as_view(), name="token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(pattern_name="jobs-page"), name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("jobs/", pages.jobs_page, name="jobs-page"),
    path("jobs/new/", pages.new_job_page, name="new-job-page"),  # before jobs/<id>/, which "new" would match
    path("jobs/<str:job_id>/", pages.job_page, name="job-page"),
    path("jobs/<str:job_id>/features/<int:index>/", pages.feature_page, name="feature-page"),
    path("sweeps/new/", sweep_pages.new_sweep_page, name="new-sweep-page"),  # before sweeps/<id>/
    path("sweeps/<str:sweep_id>/", sweep_pages.sweep_page, name="sweep-page"),
    path("gpus/", pages.gpu_page, name="gpu-page"),
    path("tokens/", tokens_page, name="tokens-page"),
    path("corpora/upload/", corpus_pages.corpus_upload_page, name="corpus-upload-page"),
]
