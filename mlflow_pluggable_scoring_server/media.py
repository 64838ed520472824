"""Media types: match a request's Content-Type, negotiate the response from Accept,
and encode what a plugin returned.

Encoders are stateless functions keyed by media type in ``ENCODERS``; a plugin
declares which of them (or which raw types) its results can be sent as.
"""

import csv
import io
import json

from werkzeug.http import parse_list_header, parse_options_header

from .errors import InvalidInput, NotAcceptable, UnsupportedMediaType

JSON = "application/json"
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff")  # PNG, JPEG: images sent as octet-stream


def parse_media_type(header):
    """Split ``"Text/CSV; charset=UTF-8"`` into ``("text/csv", {"charset": "UTF-8"})``.

    werkzeug's parser: a quoted parameter value may hold ``;`` or ``,``.
    """
    media_type, params = parse_options_header(header or "")
    return media_type.strip().lower(), params


def matches(pattern, media_type):
    """Whether a media range (``*/*``, ``image/*``, ``image/png``) covers a media type."""
    if pattern in ("*/*", "*"):
        return True
    kind, _, sub = pattern.partition("/")
    other_kind, _, other_sub = media_type.partition("/")
    return kind == other_kind and sub in ("*", other_sub)


def check_content_type(header, accepted):
    """Return the request's media type and parameters if the plugin accepts it, else raise 415."""
    media_type, params = parse_media_type(header)
    if not media_type:
        raise UnsupportedMediaType(f"Content-Type header is missing; send one of: {', '.join(accepted)}")
    if not any(matches(pattern, media_type) for pattern in accepted):
        raise UnsupportedMediaType(f"this Content-Type is not accepted; send one of: {', '.join(accepted)}")
    return media_type, params


def parse_accept(header):
    """Media ranges of an Accept header as ``(range, q)``, best first; ``*/*`` when absent."""
    ranges = []
    for position, item in enumerate(parse_list_header(header or "*/*")):  # commas in quotes stay
        media_range, params = parse_media_type(item)
        if not media_range:
            continue
        try:
            q = float(params.get("q", 1))
        except ValueError:
            q = 0.0
        # More specific ranges win among equal q: image/png > image/* > */*.
        specificity = 2 - media_range.count("*")
        ranges.append((media_range, q, specificity, -position))
    ranges.sort(key=lambda r: (r[1], r[2], r[3]), reverse=True)
    return [(media_range, q) for media_range, q, _, _ in ranges]


def negotiate(accept_header, offered):
    """Pick the response media type from ``offered`` (the plugin's order is its preference).

    Each offered type gets the q of the most specific Accept range covering it; the
    highest q wins, ties going to the plugin's order. Raises 406 if none is acceptable.
    """
    ranges = parse_accept(accept_header)
    best, best_q = None, 0.0
    for media_type in offered:
        q = next((q for media_range, q in ranges if matches(media_range, media_type)), 0.0)
        if q > best_q:
            best, best_q = media_type, q
    if best is None:
        raise NotAcceptable(f"cannot answer with any type the Accept header allows; available: {', '.join(offered)}")
    return best


def _plain(value):
    """JSON fallback for numpy, pandas and other array-likes (no per-element Python loop)."""
    for method in ("tolist", "to_list"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    if hasattr(value, "to_dict"):
        return value.to_dict(orient="records")
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__array_interface__") or hasattr(value, "__array__"):  # PIL images, tensors
        import numpy as np

        return np.asarray(value).tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(result):
    if hasattr(result, "to_dict") and hasattr(result, "columns"):  # a pandas DataFrame
        result = result.to_dict(orient="records")
    return json.dumps(result, default=_plain, allow_nan=False).encode()


def encode_csv(result):
    if hasattr(result, "to_csv"):  # pandas DataFrame or Series
        return result.to_csv(index=False).encode()
    import numpy as np

    table = np.asarray(result)
    if table.ndim == 1:
        table = table.reshape(-1, 1)
    if table.ndim != 2 or table.dtype == object:
        raise NotAcceptable("the prediction is not a table and cannot be sent as text/csv")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table.tolist())
    return out.getvalue().encode()


def encode_png(result):
    from PIL import Image

    image = result if isinstance(result, Image.Image) else Image.fromarray(result)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


ENCODERS = {JSON: encode_json, "text/csv": encode_csv, "image/png": encode_png}


def encode(result, media_type):
    """Turn what ``predict`` returned into bytes of ``media_type``.

    ``bytes`` go out as they are. A ``str`` is a JSON document (the 2020 contract):
    sent as it is for JSON, re-encoded for any other type.
    """
    if isinstance(result, (bytes, bytearray)):
        return bytes(result)
    if isinstance(result, str):
        if media_type == JSON:
            return result.encode()
        result = json.loads(result)
    if result is None:
        raise ValueError("the plugin's predict returned None")
    encoder = ENCODERS.get(media_type)
    if encoder is None:
        raise ValueError(f"no encoder for {media_type}: predict must return bytes for it")
    return encoder(result)


def is_json(media_type):
    """Whether a body of ``media_type`` is JSON (``application/json`` or a ``+json`` type)."""
    return media_type == JSON or media_type.endswith("+json")


def is_text(media_type):
    """Whether a body of ``media_type`` is text (JSON, CSV, plain text...) rather than bytes (an image, Parquet)."""
    return is_json(media_type) or media_type.startswith("text/")


def diagnose(payload):
    """Explain why a body the plugin failed on is malformed for its media type, if it is.

    Called only after ``predict`` raised: a 2020-style plugin fed broken JSON or a
    truncated image raises whatever its parser raises, and this turns that into a
    400 instead of a 500. Returns an :class:`InvalidInput`, or None.
    """
    from .decoders import read_image, read_json

    media_type = payload.media_type or ""
    try:
        if is_json(media_type):
            read_json(payload)
        elif media_type.startswith("image/") or payload.startswith(IMAGE_MAGIC):
            read_image(payload)
    except InvalidInput as e:
        return e
    return None
