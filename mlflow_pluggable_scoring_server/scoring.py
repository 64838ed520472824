"""The request path in one place: check the body, call the plugin, encode its answer.

No HTTP here (the web layer passes bytes and header values in, gets bytes and a
media type out), and no model details (the plugin owns those).
"""

import logging

from .errors import InvalidInput, ScoringError
from .media import check_content_type, diagnose, encode, negotiate
from .plugin import Payload, request_media_types, response_media_types

logger = logging.getLogger(__name__)


class Scorer:
    """A loaded plugin and its model, ready to score requests."""

    def __init__(self, plugin, model):
        self.plugin = plugin
        self.model = model
        self.request_types = request_media_types(plugin)
        self.response_types = response_media_types(plugin)

    def score(self, body, content_type, accept):
        """Score one request body; returns ``(response bytes, response media type)``.

        Raises :class:`ScoringError` with the status to answer: 415 for a Content-Type
        the plugin does not take, 400 for an empty or malformed body, 406 when nothing
        in ``accept`` can be produced, 500 when the plugin fails.
        """
        media_type, params = check_content_type(content_type, self.request_types)
        if not body:
            raise InvalidInput("request body is empty")
        response_type = negotiate(accept, self.response_types)
        payload = Payload(body, media_type, params)
        try:
            result = self.plugin.predict(self.model, payload)
        except ScoringError:
            raise
        except Exception as e:
            malformed = diagnose(payload)
            if malformed is not None:
                logger.info("plugin refused a malformed %s body: %s", media_type, malformed.message)
                raise malformed from e
            logger.exception("plugin %s failed on a %s request", type(self.plugin).__name__, media_type)
            raise ScoringError("the plugin failed to score this request; the server log has the details") from e
        try:
            return encode(result, response_type), response_type
        except ScoringError:
            raise
        except Exception as e:
            logger.exception("cannot encode the result of %s as %s", type(self.plugin).__name__, response_type)
            raise ScoringError(f"the prediction cannot be encoded as {response_type}; the server log has the details") from e
