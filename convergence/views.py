import csv

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response

from convergence import selectors, services
from convergence.models import ConvergencePoint
from convergence.serializers import (
    BarePointInputSerializer,
    BatchInputSerializer,
    BatchResultSerializer,
    GraphQuerySerializer,
    GraphSerializer,
    PointInputSerializer,
    PointSerializer,
    StreamQuerySerializer,
    StreamSerializer,
    parse_point,
    parse_point_batch,
    point_representation,
)
from simsched.exceptions import NotFoundError
from simulations import guards  # guards: a refused non-finite value may stop the run
from simulations.models import Simulation
from simulations.permissions import ERR_REPORT, can_report_for
from simulations.selectors import WriteAccess, simulation_write_access

SIMULATION_ID = OpenApiParameter("simulation_id", int, OpenApiParameter.PATH)
CSV_EXPORT_CHUNK = 5000


class StepCursorPagination(CursorPagination):
    ordering = "step"
    page_size = 1000
    page_size_query_param = "limit"
    max_page_size = 10_000


class CSVRenderer(BaseRenderer):
    """Marks `?format=csv` as acceptable; the view streams the body itself."""

    media_type = "text/csv"
    format = "csv"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else str(data).encode()


class _Echo:
    def write(self, value):
        return value


def _csv_rows(queryset):
    writer = csv.writer(_Echo())
    yield writer.writerow(["step", "timestamp", "loss_value"])
    for step, timestamp, loss in queryset.iterator(chunk_size=CSV_EXPORT_CHUNK):
        yield writer.writerow([step, timestamp.isoformat(), repr(loss)])


class NonFiniteJSONParser(JSONParser):  # guards
    """Reads NaN and Infinity literals (as Python's json writes them): validation still refuses
    them, and the nan guard learns which run sent one."""

    strict = False


class ConvergenceViewSet(viewsets.ViewSet):
    """Convergence points: agents write them, charts and streams read them."""

    lookup_url_kwarg = "simulation_id"
    lookup_value_regex = r"[0-9]+"
    parser_classes = [NonFiniteJSONParser]  # guards

    def handle_exception(self, exc):  # guards: a refused non-finite value may stop the run
        if isinstance(exc, ValidationError) and self.request.method == "POST":
            exc = guards.nonfinite_refusal(
                exc,
                data=self.request.data,
                simulation_id=self.kwargs.get("simulation_id"),
                user=self.request.user,
            )
        return super().handle_exception(exc)

    def _simulation_for_write(self, simulation_id) -> WriteAccess:
        simulation = simulation_write_access(simulation_id=simulation_id)
        if simulation is None:
            raise NotFoundError(f"Simulation {simulation_id} does not exist.")
        if not can_report_for(self.request.user, simulation):
            raise PermissionDenied(ERR_REPORT)
        return simulation

    @extend_schema(
        request=PointInputSerializer,
        responses={201: PointSerializer, 200: OpenApiResponse(PointSerializer, "Already stored")},
        summary="Store one point (idempotent by step)",
    )
    @action(detail=False, methods=["post"], url_path="data")
    def add_point(self, request):
        data = parse_point(request.data)
        self._simulation_for_write(data["simulation_id"])
        point, created = services.point_add(**data)
        return Response(
            point_representation(point),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[SIMULATION_ID],
        request=BarePointInputSerializer,
        responses={201: PointSerializer, 200: OpenApiResponse(PointSerializer, "Already stored")},
        summary="Store one point with bare SQL",
    )
    @action(detail=True, methods=["post"], url_path="add-bare-sql")
    def add_bare_sql(self, request, simulation_id=None):
        data = parse_point(request.data, BarePointInputSerializer)
        self._simulation_for_write(simulation_id)
        point, created = services.point_add_bare_sql(simulation_id=int(simulation_id), **data)
        return Response(
            point_representation(point),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[SIMULATION_ID],
        request=BatchInputSerializer,
        responses={
            200: BatchResultSerializer,
            400: OpenApiResponse(description="Invalid points, or more than 10,000"),
            409: OpenApiResponse(description="A step is stored with a different loss"),
            413: OpenApiResponse(description="Body larger than MAX_REQUEST_BYTES (4 MiB)"),
        },
        summary="Store up to 10,000 points (idempotent by step)",
        description="At most 10,000 points and 4 MiB per request. Re-sending stores nothing twice.",
    )
    @action(detail=True, methods=["post"], url_path="points")
    def add_points(self, request, simulation_id=None):
        points = parse_point_batch(request.data)
        self._simulation_for_write(simulation_id)
        result = services.points_ingest(simulation_id=int(simulation_id), points=points)
        return Response({"stored": result.stored, "duplicates": result.duplicates})

    @extend_schema(
        parameters=[SIMULATION_ID, GraphQuerySerializer],
        responses=GraphSerializer,
        summary="Chart points, downsampled keeping every bucket's min, max, first and last",
    )
    @action(detail=True, methods=["get"])
    def graph(self, request, simulation_id=None):
        query = GraphQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        graph = selectors.convergence_graph(
            simulation_id=int(simulation_id), **query.validated_data
        )
        return Response(GraphSerializer(graph).data)

    @extend_schema(
        parameters=[SIMULATION_ID, StreamQuerySerializer],
        responses=StreamSerializer,
        summary="Points after since_step, for incremental polling and backfill",
    )
    @action(detail=True, methods=["get"])
    def stream(self, request, simulation_id=None):
        query = StreamQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        stream = selectors.points_since(simulation_id=int(simulation_id), **query.validated_data)
        return Response(StreamSerializer(stream).data)

    @extend_schema(
        parameters=[
            SIMULATION_ID,
            OpenApiParameter(
                "format", str, enum=["json", "csv"], description="csv streams the whole run"
            ),
        ],
        responses={200: PointSerializer(many=True), (200, "text/csv"): OpenApiTypes.STR},
        summary="All points in step order, cursor-paginated, or the whole run as CSV",
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[*viewsets.ViewSet.renderer_classes, CSVRenderer],
    )
    def data(self, request, simulation_id=None):
        if not Simulation.objects.filter(pk=simulation_id).exists():
            raise NotFoundError(f"Simulation {simulation_id} does not exist.")
        points = ConvergencePoint.objects.filter(simulation_id=simulation_id)
        if request.accepted_renderer.format == "csv":
            rows = points.order_by("step").values_list("step", "timestamp", "loss_value")
            response = StreamingHttpResponse(_csv_rows(rows), content_type="text/csv")
            response["Content-Disposition"] = (
                f'attachment; filename="simulation-{simulation_id}.csv"'
            )
            return response
        paginator = StepCursorPagination()
        page = paginator.paginate_queryset(points, request, view=self)
        return paginator.get_paginated_response(PointSerializer(page, many=True).data)
