"""One exception root for everything the server answers with an error status.

Plugins raise these (``InvalidInput`` mostly); the HTTP layer turns them into
``{"error_code": ..., "message": ...}`` with the status they carry.
"""

from http import HTTPStatus


class ScoringError(Exception):
    """An error the caller can see: a message and the HTTP status it is answered with."""

    status_code = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message, status_code=None, error_code=None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = HTTPStatus(status_code)
        self._error_code = error_code  # e.g. MLflow's INVALID_PARAMETER_VALUE; by default the status' name

    @property
    def error_code(self):
        return self._error_code or self.status_code.name


class InvalidInput(ScoringError):
    """The request body cannot be scored: unreadable, wrong shape, wrong values (400)."""

    status_code = HTTPStatus.BAD_REQUEST


class UnsupportedMediaType(ScoringError):
    """The request's Content-Type is not one the plugin accepts (415)."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class TooLarge(ScoringError):
    """The request body is larger than the server's limit (413)."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, limit):
        super().__init__(f"request body is larger than the server's limit of {limit} bytes")


class NotAcceptable(ScoringError):
    """No media type the caller accepts can be produced (406)."""

    status_code = HTTPStatus.NOT_ACCEPTABLE


class StartupError(Exception):
    """The server cannot start: the message is the one line shown to the user."""


class Unauthorized(ScoringError):
    """No valid bearer token (401)."""

    status_code = HTTPStatus.UNAUTHORIZED

    def __init__(self, message="send the server's token as 'Authorization: Bearer <token>'"):
        super().__init__(message)


class NotReady(ScoringError):
    """The model is still loading (503)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class RequestTimeout(ScoringError):
    """The plugin did not answer within the request timeout (504)."""

    status_code = HTTPStatus.GATEWAY_TIMEOUT


class ReadTimeout(ScoringError):
    """The client did not send its whole request within the read timeout (408)."""

    status_code = HTTPStatus.REQUEST_TIMEOUT
