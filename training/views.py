from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from mistudio.errors import Conflict, ServiceError
from training import documents, modelcheck, serializers, services

ERRORS = {400: serializers.ErrorSerializer, 404: serializers.ErrorSerializer}


class TrainView(APIView):
    @extend_schema(request=serializers.TrainRequestSerializer, responses={200: serializers.TrainResponseSerializer, **ERRORS},
                   summary="Start a training job")
    def post(self, request):
        form = serializers.TrainRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = services.job_create(owner=request.user, request=services.JobRequest(**form.validated_data))
        return Response({
            "job_id": job.id,
            "status": job.status,
            "message": f"Training job started for {job.model_name}",
            "model_name": job.model_name,
            "requires_token": job.requires_token,
            "memory_check": job.memory_check,
            "optimizations_applied": services.optimizations_applied(job),
        })


class JobStatusView(APIView):
    @extend_schema(responses={200: serializers.StatusSerializer, **ERRORS}, summary="Training job status")
    def get(self, request, job_id):
        job = services.job_get(user=request.user, job_id=job_id)
        return Response(serializers.StatusSerializer(documents.status_document(job)).data)


class JobResultView(APIView):
    @extend_schema(responses={200: serializers.ResultSerializer, 409: serializers.ErrorSerializer, **ERRORS},
                   summary="Final results and artifacts of a finished job")
    def get(self, request, job_id):
        job = services.job_get(user=request.user, job_id=job_id)
        if not job.is_finished:
            raise Conflict(
                f"Job {job.id} is {job.status} ({job.progress:.0%} done); its result is available once it finishes. "
                f"Poll /api/v1/train/{job.id}/status."
            )
        return Response(serializers.ResultSerializer(documents.result_document(job)).data)


class JobCancelView(APIView):
    @extend_schema(request=None, responses={200: serializers.StatusSerializer, 409: serializers.ErrorSerializer, **ERRORS},
                   summary="Cancel a queued or running job")
    def post(self, request, job_id):
        job = services.job_cancel(services.job_get(user=request.user, job_id=job_id))
        return Response(serializers.StatusSerializer(documents.status_document(job)).data)


class JobListView(APIView):
    @extend_schema(responses={200: serializers.JobListSerializer}, summary="List training jobs")
    def get(self, request):
        jobs = services.jobs_visible_to(request.user)
        return Response({"total_jobs": jobs.count(), "jobs": [documents.summary_document(j) for j in jobs]})


class ValidateModelView(APIView):
    @extend_schema(request=serializers.ValidateModelRequestSerializer,
                   responses={200: serializers.ValidateModelResponseSerializer, 400: serializers.ErrorSerializer},
                   summary="Check that a model resolves, without loading its weights")
    def post(self, request):
        form = serializers.ValidateModelRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        return Response(modelcheck.validation_report(**form.validated_data))


class CheckMemoryView(APIView):
    @extend_schema(parameters=[serializers.CheckMemoryQuerySerializer,
                               OpenApiParameter("model_name", str, OpenApiParameter.PATH, description="Model id, URL-encoded or not")],
                   responses={200: serializers.CheckMemoryResponseSerializer, 400: serializers.ErrorSerializer},
                   summary="Estimate memory needs and GPU compatibility for a model")
    def get(self, request, model_name):
        query = serializers.CheckMemoryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = dict(query.validated_data)
        described = modelcheck.describe(model_name)
        total = described.info.total_layers
        if params["layer_number"] is None:
            params["layer_number"] = total // 2
        elif params["layer_number"] >= total:
            raise ServiceError(f"layer_number {params['layer_number']} is out of range: {model_name} has {total} layers.")
        return Response(modelcheck.memory_report(described, **params))
