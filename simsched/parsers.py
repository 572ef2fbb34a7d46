"""The API's JSON parser: DRF's, with a body nested too deeply for Python's parser refused as
malformed (400) rather than a crash (500): `json` raises RecursionError for it, not ValueError."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError

ERR_TOO_DEEP = "JSON parse error - the body is nested too deeply."


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(ERR_TOO_DEEP) from None
