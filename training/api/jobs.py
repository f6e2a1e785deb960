from django.http import FileResponse, StreamingHttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from mistudio.errors import Conflict, ErrorSerializer, ServiceError
from training import documents, selectors, services
from training.requests import JobRequest
from training.artifacts import downloads
from training.api import feature_serializers
from training.artifacts import features
from training.admission import memory as memory_check
from training.admission import model as modelcheck
from training.api import serializers

ERRORS = {400: ErrorSerializer, 404: ErrorSerializer}


class TrainView(APIView):
    throttle_scope = "expensive"  # mistudio.throttles

    @extend_schema(request=serializers.TrainRequestSerializer,
                   responses={200: serializers.TrainResponseSerializer, 403: ErrorSerializer, 429: ErrorSerializer, **ERRORS},
                   summary="Start a training job",
                   description="400 for a job that cannot fit its device's memory (staff may send force: true), its "
                               "disk or the owner's storage quota (MISTUDIO_STORAGE_QUOTA_BYTES); 403 for force from "
                               "anyone but staff; 429 past the owner's queued and running jobs "
                               "(MISTUDIO_MAX_ACTIVE_JOBS_PER_USER).")
    def post(self, request):
        form = serializers.TrainRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = services.job_create(owner=request.user, request=JobRequest(**form.validated_data))
        return Response({
            "job_id": job.id,
            "status": job.status,
            "message": f"Training job started for {job.model_name}",
            "model_name": job.model_name,
            "requires_token": job.requires_token,
            "memory_check": job.memory_check,
            "optimizations_applied": selectors.optimizations_applied(job),
        })


class JobStatusView(APIView):
    @extend_schema(responses={200: serializers.StatusSerializer, **ERRORS}, summary="Training job status")
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response(serializers.StatusSerializer(documents.status_document(job)).data)


class JobResultView(APIView):
    @extend_schema(responses={200: serializers.ResultSerializer, 409: ErrorSerializer, **ERRORS},
                   summary="Final results and artifacts of a finished job")
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        if not job.is_finished:
            raise Conflict(
                f"Job {job.id} is {job.status} ({job.progress:.0%} done); its result is available once it finishes. "
                f"Poll /api/v1/train/{job.id}/status."
            )
        return Response(serializers.ResultSerializer(documents.result_document(job)).data)


class JobCancelView(APIView):
    @extend_schema(request=None, responses={200: serializers.StatusSerializer, 409: ErrorSerializer, **ERRORS},
                   summary="Cancel a queued or running job")
    def post(self, request, job_id):
        job = services.job_cancel(selectors.job_to_cancel(user=request.user, job_id=job_id))
        return Response(serializers.StatusSerializer(documents.status_document(job)).data)


class JobListView(APIView):
    @extend_schema(responses={200: serializers.JobListSerializer}, summary="List training jobs")
    def get(self, request):
        jobs = selectors.jobs_visible_to(request.user)
        return Response({"total_jobs": jobs.count(), "jobs": [documents.summary_document(j) for j in jobs]})


class ValidateModelView(APIView):
    throttle_scope = "expensive"

    @extend_schema(request=serializers.ValidateModelRequestSerializer,
                   responses={200: serializers.ValidateModelResponseSerializer, 400: ErrorSerializer},
                   summary="Check that a model resolves, without loading its weights")
    def post(self, request):
        form = serializers.ValidateModelRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        return Response(modelcheck.validation_report(**form.validated_data))


class CheckMemoryView(APIView):
    throttle_scope = "expensive"

    @extend_schema(parameters=[serializers.CheckMemoryQuerySerializer,
                               OpenApiParameter("model_name", str, OpenApiParameter.PATH, description="Model id, URL-encoded or not")],
                   responses={200: serializers.CheckMemoryResponseSerializer, 400: ErrorSerializer},
                   summary="Estimate memory needs and GPU compatibility for a model, and the disk a run on a corpus needs")
    def get(self, request, model_name):
        query = serializers.CheckMemoryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(memory_check.check_memory_report(user=request.user, model_name=model_name, **query.validated_data))


class FeatureListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("sort", str, enum=list(features.SORTS), default="frequency",
                             description="Order of the list"),
            OpenApiParameter("order", str, enum=["desc", "asc"], default="desc"),
            OpenApiParameter("filter", str, enum=list(features.FILTERS), default="all",
                             description=f"dead: never fired on the analyzed tokens; dense: fired on more than "
                                         f"{features.DENSE_FRACTION:.0%} of them; alive: fired at least once"),
            OpenApiParameter("q", str, description="Features whose top-context peak tokens or promoted tokens "
                                                   "contain this text (case-insensitive), or whose index it is"),
            OpenApiParameter("page", int, default=1),
            OpenApiParameter("page_size", int, default=50, description=f"1 to {features.MAX_PAGE_SIZE}"),
        ],
        responses={200: feature_serializers.FeatureListSerializer, 409: ErrorSerializer, 410: ErrorSerializer, **ERRORS},
        summary="The job's features with their activation statistics (paged)",
        operation_id="api_v1_train_features_list",
    )
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        params = request.query_params
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ServiceError(f"order must be asc or desc, not {order!r}")
        return Response(features.feature_list(
            job,
            sort=params.get("sort", "frequency"),
            descending=order == "desc",
            filter=params.get("filter", "all"),
            page=_int_param(params, "page", 1),
            page_size=_int_param(params, "page_size", 50),
            query=params.get("q", ""),
        ))


class FeatureDetailView(APIView):
    @extend_schema(parameters=[OpenApiParameter("index", int, OpenApiParameter.PATH, description="0 to hidden_dim - 1")],
                   responses={200: feature_serializers.FeatureDetailSerializer, 409: ErrorSerializer, 410: ErrorSerializer,
                              **ERRORS},
                   summary="One feature: top activating contexts, activation histogram and logit effect",
                   operation_id="api_v1_train_feature_retrieve")
    def get(self, request, job_id, index: str):
        job = selectors.job_get(user=request.user, job_id=job_id)
        if not index.isdecimal():
            raise ServiceError(f"The feature index must be a non-negative integer, not {index!r}")
        return Response(features.feature_detail(job, int(index)))


def _int_param(params, name, default):
    value = params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ServiceError(f"{name} must be an integer, not {value!r}") from None


class JobCurvesView(APIView):
    @extend_schema(responses={200: feature_serializers.CurvesSerializer, **ERRORS},
                   summary="Training curves: loss, MSE, L0 and explained variance over steps (grows while the job runs)")
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response(documents.curves_document(job))


class JobDownloadView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter(
            "artifact", str, enum=list(downloads.ARTIFACTS), default=downloads.DEFAULT_ARTIFACT,
            description="saelens: the SAELens folder as one .zip (streamed, no Content-Length); weights: the SAE's "
                        "state dict (.pt, torch.load); metadata: the job's metadata JSON")],
        responses={
            (200, "application/zip"): OpenApiResponse(
                OpenApiTypes.BINARY, description="An attachment named for the job: application/zip for saelens, "
                                                 "application/octet-stream for weights, application/json for metadata"),
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (200, "application/json"): OpenApiTypes.OBJECT,
            409: ErrorSerializer, 410: ErrorSerializer, **ERRORS,
        },
        summary="Download an artifact of a finished job (409 until it finishes, 410 once its file was deleted)",
    )
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        download = downloads.artifact_download(job, downloads.artifact_get(request.query_params.get("artifact")))
        if download.file is not None:
            return FileResponse(download.file, as_attachment=True, filename=download.filename,
                                content_type=download.content_type)
        response = StreamingHttpResponse(download.chunks, content_type=download.content_type)
        response["Content-Disposition"] = content_disposition_header(True, download.filename)
        return response

    def perform_content_negotiation(self, request, force=False):
        # Only the errors are rendered (as JSON); a client that asks for application/zip gets its
        # zip, or its error as JSON, never a 406.
        return super().perform_content_negotiation(request, force=True)
