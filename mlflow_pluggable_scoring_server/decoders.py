"""Helpers for plugins: turn request bytes into model input, or raise ``InvalidInput``.

Every refusal is an :class:`~mlflow_pluggable_scoring_server.errors.InvalidInput`
(answered with 400) whose message says what was expected, never what was sent.
"""

import io
import json
import warnings

import numpy as np

from .errors import InvalidInput

IMAGE_TYPES = ("image/png", "image/jpeg")
# Each JSON array or object costs Python 56 to 200 bytes for as few as 2 bytes of body ("[]"): a
# 16 MB body of empty rows would take 400 MB to parse. Half a million of them (a table of as many
# rows) take at most about 35 MB; more are refused before parsing, in a few milliseconds.
MAX_JSON_CONTAINERS = 500_000


def check_json_containers(data):
    """Refuse, before it is parsed, a JSON body with more arrays and objects than MAX_JSON_CONTAINERS.

    Brackets inside strings count too: the bound is only ever reached by bodies of hundreds of KB.
    """
    if data.count(b"[") + data.count(b"{") > MAX_JSON_CONTAINERS:
        raise InvalidInput(f"request body has more than {MAX_JSON_CONTAINERS:,} JSON arrays and objects"
                           " (rows, records); send fewer rows per request")


def read_json(data):
    """Parse a JSON request body."""
    if not data:
        raise InvalidInput("request body is empty; expected a JSON document")
    check_json_containers(data)
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise InvalidInput("request body is not UTF-8 text; expected a JSON document") from None
    except json.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError:  # Python's limit on the digits of an integer (4,300)
        raise InvalidInput("request body holds a number with more digits than JSON numbers here may have") from None
    except RecursionError:
        raise InvalidInput("request body is JSON nested too deeply") from None


def read_split_frame(data, columns=None, dtype="float32", allow_nan=False):
    """Read a table sent as pandas' "split" JSON orientation into a 2-D numpy array.

    The body is ``{"columns": [...], "data": [[...], ...]}`` (an ``index`` key is
    ignored), or MLflow's ``{"dataframe_split": {...}}`` wrapping of it. With
    ``columns``, the array has exactly those columns in that order: extra columns
    (a label, say) are dropped and a missing one is an error. Missing values (null,
    NaN) and infinities are refused unless ``allow_nan``.
    """
    doc = read_json(data)
    if isinstance(doc, dict) and "dataframe_split" in doc:
        doc = doc["dataframe_split"]
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), list) or not isinstance(doc.get("data"), list):
        raise InvalidInput('expected a JSON object in pandas "split" orientation: {"columns": [...], "data": [[...], ...]}')
    sent, rows = doc["columns"], doc["data"]
    if not sent:
        raise InvalidInput('"columns" is empty: a table needs at least one column')
    if not rows:
        raise InvalidInput('"data" has no rows')
    if any(not isinstance(row, list) or len(row) != len(sent) for row in rows):
        raise InvalidInput(f'every row of "data" must be a list of {len(sent)} values, one per column')
    try:
        with np.errstate(over="ignore"):  # too large for dtype: infinite, refused below
            table = np.asarray(rows, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        table = None
    if table is None or table.ndim != 2:
        raise InvalidInput(f'every value of "data" must be a number ({dtype})')
    if not allow_nan and table.dtype.kind == "f" and not np.isfinite(table).all():
        raise InvalidInput('"data" has missing (null, NaN) or infinite values')
    if columns is None:
        return table
    position = {name: i for i, name in enumerate(sent) if isinstance(name, str)}
    missing = [name for name in columns if name not in position]
    if missing:
        raise InvalidInput(f"missing columns: {', '.join(missing)}")
    return table[:, [position[name] for name in columns]]


def read_tensor_columns(inputs, columns, dtype="float32"):
    """The named V2 tensors ``inputs`` (name -> array, as a plugin's ``preprocess_tensors`` gets them) as a 2-D
    array with exactly ``columns``, in that order: each a column of N values (shape ``[N]`` or ``[N, 1]``).
    Other inputs are ignored; a missing column, a tensor of another shape or non-numeric values are refused."""
    missing = [name for name in columns if name not in inputs]
    if missing:
        raise InvalidInput(f"missing inputs: {', '.join(missing)}")
    arrays = [np.asarray(inputs[name]) for name in columns]
    rows = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
    bad = [name for name, a in zip(columns, arrays) if a.ndim not in (1, 2) or a.shape[0] != rows or a.size != rows]
    if bad or not rows:
        raise InvalidInput(f"every input must be a column of the same number of rows, shape [N] or [N, 1]: {', '.join(bad) or 'no rows'}")
    if any(a.dtype.kind not in "biuf" for a in arrays):
        raise InvalidInput(f"every input must hold numbers ({dtype})")
    table = np.stack([a.reshape(-1) for a in arrays], axis=1).astype(dtype, copy=False)
    if table.dtype.kind == "f" and not np.isfinite(table).all():
        raise InvalidInput("the inputs have missing (NaN) or infinite values")
    return table


def limit_image_pixels(max_pixels):
    """Refuse images over ``max_pixels`` pixels, for our decoder and any plugin using Pillow.

    Pillow only warns between its limit and twice it; here that is an error too.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def read_image(data, mode=None, size=None):
    """Decode a PNG or JPEG body into a PIL image, converted to ``mode`` and resized to ``size``.

    Pillow's decompression-bomb guard stays on; a truncated or corrupt image is refused.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput("request body is empty; expected an image (PNG or JPEG)")
    try:
        with warnings.catch_warnings():  # the pixel limit is checked below, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.format not in ("PNG", "JPEG"):
            raise InvalidInput(f"image format {image.format} is not accepted; send PNG or JPEG")
        width, height = image.size
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            raise InvalidInput(f"image is {width}x{height} pixels, over the server's limit of {Image.MAX_IMAGE_PIXELS}")
        image.load()
    except UnidentifiedImageError:
        raise InvalidInput("request body is not a readable image; send PNG or JPEG") from None
    except Image.DecompressionBombError:
        raise InvalidInput(f"image is over the server's limit of {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(f"image cannot be decoded: {e}") from None
    if mode and image.mode != mode:
        image = image.convert(mode)
    if size and image.size != tuple(size):
        image = image.resize(tuple(size))
    return image
