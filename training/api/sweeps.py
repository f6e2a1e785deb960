"""The sweep endpoints: start one, its status with every member's, cancel it, list them. Thin:
each validates its input and calls training.sweeps."""
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from mistudio.errors import ErrorSerializer
from training.api import sweep_serializers as serializers
from training import sweeps

ERRORS = {400: ErrorSerializer, 404: ErrorSerializer}


class SweepCreateView(APIView):
    @property
    def throttle_scope(self):
        """Making a sweep is expensive (mistudio.throttles); listing the sweeps is not."""
        return "expensive" if self.request.method == "POST" else None

    @extend_schema(request=serializers.SweepRequestSerializer,
                   responses={201: serializers.SweepCreatedSerializer, 403: ErrorSerializer, 429: ErrorSerializer, **ERRORS},
                   summary="Start a sweep: one job per layer x hook point x member, trained from one pass",
                   description="Each member counts as a job toward MISTUDIO_MAX_ACTIVE_JOBS_PER_USER (429 past it); "
                               "memory, disk and the storage quota are checked as for one job (400); force is staff "
                               "only (403).")
    def post(self, request):
        form = serializers.SweepRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        sweep = sweeps.sweep_create(owner=request.user, request=form.to_request())
        return Response(sweeps.sweep_created_document(sweep), status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: serializers.SweepListSerializer}, summary="List sweeps", operation_id="api_v1_sweeps_list")
    def get(self, request):
        visible = sweeps.sweeps_visible_to(request.user).select_related("corpus")
        return Response({"total_sweeps": visible.count(), "sweeps": [sweeps.sweep_document(s) for s in visible[:200]]})


class SweepView(APIView):
    @extend_schema(responses={200: serializers.SweepSerializer, **ERRORS}, summary="A sweep's status and its members'")
    def get(self, request, sweep_id):
        return Response(sweeps.sweep_document(sweeps.sweep_get(user=request.user, sweep_id=sweep_id)))


class SweepCancelView(APIView):
    @extend_schema(request=None, responses={200: serializers.SweepSerializer, 409: ErrorSerializer, **ERRORS},
                   summary="Cancel every member of a sweep that has not ended")
    def post(self, request, sweep_id):
        sweep = sweeps.sweep_cancel(sweeps.sweep_to_cancel(user=request.user, sweep_id=sweep_id))
        return Response(sweeps.sweep_document(sweep))
