from django.core.management.base import BaseCommand, CommandError

from convergence.housekeeping import CutoffError, compact_points, parse_cutoff


class Command(BaseCommand):
    help = "Drop the raw points of runs that ended before a cutoff; keep their rollups."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="Nd, Nh or an ISO date")
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args, older_than, dry_run, **options):
        try:
            cutoff = parse_cutoff(older_than)
        except CutoffError as error:
            raise CommandError(str(error)) from error
        result = compact_points(older_than=cutoff, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(
            f"{result.simulations} simulations, {result.series} series: "
            f"{verb} {result.points_deleted} points (before {cutoff.isoformat()})"
        )
