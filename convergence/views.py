from base64 import b64decode
from urllib.parse import parse_qs

from django.db.models import CharField, Value
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response

from convergence import selectors, services
from convergence.models import DEFAULT_METRIC, ConvergencePoint
from convergence.serializers import (
    DATA_PAGE_DEFAULT,
    DATA_PAGE_MAX,
    BarePointInputSerializer,
    BatchInputSerializer,
    BatchResultSerializer,
    CompareQuerySerializer,
    CompareSerializer,
    DataQuerySerializer,
    GraphQuerySerializer,
    GraphSerializer,
    MetricsSerializer,
    PointInputSerializer,
    PointPageSerializer,
    PointSerializer,
    StreamQuerySerializer,
    StreamSerializer,
    parse_point,
    parse_point_batch,
    point_representation,
)
from convergence.services import MAX_STEP
from simsched.exceptions import NotFoundError
from simsched.parsers import JSONParser
from simulations import guards  # guards: a refused non-finite value may stop the run
from simulations.models import Simulation
from simulations.permissions import can_read_simulation

SIMULATION_ID = OpenApiParameter("simulation_id", int, OpenApiParameter.PATH)
CSV_EXPORT_CHUNK = 5000
ERR_SIMULATION_NOT_FOUND = "Simulation {simulation_id} does not exist."
ERR_INVALID_CURSOR = "Invalid cursor: use the next or previous link of a page."
ERR_MAY_NOT_READ = "You may not read simulation {simulation_id}."


class StepCursorPagination(CursorPagination):
    """Keyset pages by step. A cursor that does not decode to one is a 400, not a 500."""

    ordering = "step"
    page_size = DATA_PAGE_DEFAULT
    page_size_query_param = "limit"  # validated by DataQuerySerializer first
    max_page_size = DATA_PAGE_MAX

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        if not encoded:  # absent, or sent empty: the first page, as for every empty parameter
            return None
        try:
            text = b64decode(encoded.encode("ascii"), validate=True).decode("ascii")
            tokens = parse_qs(text, keep_blank_values=True, strict_parsing=True)
        except (TypeError, ValueError) as exc:
            raise ValidationError({"cursor": [ERR_INVALID_CURSOR]}) from exc
        if (
            not tokens
            or not set(tokens) <= {"o", "r", "p"}
            or any(len(v) > 1 for v in tokens.values())
        ):
            raise ValidationError({"cursor": [ERR_INVALID_CURSOR]})
        offset, reverse = tokens.get("o", ["0"])[0], tokens.get("r", ["0"])[0]
        position = tokens.get("p", [None])[0]
        if not _digits(offset) or int(offset) > self.offset_cutoff or reverse not in ("0", "1"):
            raise ValidationError({"cursor": [ERR_INVALID_CURSOR]})
        if position is not None and not (_digits(position) and int(position) <= MAX_STEP):
            raise ValidationError({"cursor": [ERR_INVALID_CURSOR]})
        return Cursor(offset=int(offset), reverse=reverse == "1", position=position)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 12


class CSVRenderer(BaseRenderer):
    """Marks `?format=csv` as acceptable; the view streams the body itself."""

    media_type = "text/csv"
    format = "csv"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else str(data).encode()


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

    def _simulation_for_write(self, simulation_id) -> None:
        services.require_report_access(self.request.user, simulation_id)

    @extend_schema(
        request=PointInputSerializer,
        responses={
            201: PointSerializer,
            200: OpenApiResponse(PointSerializer, "Already stored"),
        },
        summary="Store one point (idempotent by metric and step)",
        description="Without `step` the server takes the series' next one (a retry of such a "
        "point cannot be recognised and stores it again).",
    )
    @action(detail=False, methods=["post"], url_path="data")
    def add_point(self, request):
        data = parse_point(request.data)
        point, created = services.point_add(**data, reporter=request.user)
        return Response(
            point_representation(point),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[SIMULATION_ID],
        request=BarePointInputSerializer,
        responses={
            201: PointSerializer,
            200: OpenApiResponse(PointSerializer, "Already stored"),
        },
        summary="Store one point with bare SQL",
    )
    @action(detail=True, methods=["post"], url_path="add-bare-sql")
    def add_bare_sql(self, request, simulation_id=None):
        data = parse_point(request.data, with_simulation=False)
        self._simulation_for_write(simulation_id)
        point, created = services.point_add_bare_sql(simulation_id=int(simulation_id), **data)
        return Response(
            point_representation(point),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[SIMULATION_ID],
        request=BatchInputSerializer,
        responses={200: BatchResultSerializer},
        summary="Store up to 10,000 values (idempotent by metric and step)",
        description="Each point is `{step, loss_value, metric?, timestamp?}` or `{step, values: "
        "{metric: value, ...}, timestamp?}`. At most 10,000 values and 4 MiB per request. "
        "Re-sending stores nothing twice; a value stored different rejects the whole request "
        "(409 naming the series).",
    )
    @action(detail=True, methods=["post"], url_path="points")
    def add_points(self, request, simulation_id=None):
        batch = parse_point_batch(request.data)
        self._simulation_for_write(simulation_id)
        result = services.points_ingest(simulation_id=int(simulation_id), points=batch.points)
        return Response({"stored": result.stored, "duplicates": result.duplicates + batch.repeats})

    @extend_schema(
        parameters=[SIMULATION_ID],
        responses={200: MetricsSerializer},
        summary="The simulation's series, each with points, first and last step, latest, min, max",
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request, simulation_id=None):
        return Response(
            MetricsSerializer(selectors.simulation_metrics(simulation_id=int(simulation_id))).data
        )

    @extend_schema(
        parameters=[SIMULATION_ID, GraphQuerySerializer],
        responses={200: GraphSerializer},
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
        parameters=[CompareQuerySerializer],
        responses={200: CompareSerializer},
        summary="One metric of up to 20 simulations, each downsampled as the graph is",
        description="Every simulation named must exist (404) and be readable (403); none is "
        "silently dropped.",
    )
    @action(detail=False, methods=["get"])
    def compare(self, request):
        query = CompareQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        options = dict(query.validated_data)
        simulation_ids = options.pop("simulations")
        found = Simulation.objects.in_bulk(simulation_ids)
        for simulation_id in simulation_ids:
            if simulation_id not in found:
                raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))
            if not can_read_simulation(request.user, found[simulation_id]):
                raise PermissionDenied(ERR_MAY_NOT_READ.format(simulation_id=simulation_id))
        compare = selectors.convergence_compare(simulation_ids=simulation_ids, **options)
        return Response(CompareSerializer(compare).data)

    @extend_schema(
        parameters=[SIMULATION_ID, StreamQuerySerializer],
        responses={200: StreamSerializer},
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
            DataQuerySerializer,
            OpenApiParameter(
                "format", str, enum=["json", "csv"], description="csv streams the whole run"
            ),
        ],
        responses={
            200: PointPageSerializer,
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR,
                description="`step,timestamp,loss_value` for one metric; without `metric`, "
                "every series in long form `step,metric,value,timestamp`.",
            ),
        },
        summary="One series' points in step order, cursor-paginated, or the run as CSV",
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[*viewsets.ViewSet.renderer_classes, CSVRenderer],
    )
    def data(self, request, simulation_id=None):
        query = DataQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        metric = query.validated_data["metric"]
        if request.accepted_renderer.format == "csv":
            chunks = selectors.points_csv(simulation_id=int(simulation_id), metric=metric)
            response = StreamingHttpResponse(chunks, content_type="text/csv")
            response["Content-Disposition"] = (
                f'attachment; filename="simulation-{simulation_id}.csv"'
            )
            return response
        if not Simulation.objects.filter(pk=simulation_id).exists():
            raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))
        metric = metric or DEFAULT_METRIC
        selectors.require_raw_points(simulation_id=int(simulation_id), metric=metric)
        points = ConvergencePoint.objects.filter(
            simulation_id=simulation_id, series__metric=metric
        ).annotate(metric=Value(metric, output_field=CharField()))
        paginator = StepCursorPagination()
        page = paginator.paginate_queryset(points, request, view=self)
        return paginator.get_paginated_response(PointSerializer(page, many=True).data)
