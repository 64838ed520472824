"""Content-Type matching, Accept negotiation and result encoding."""

import json

import numpy as np
import pandas as pd
import pytest

from mlflow_pluggable_scoring_server.errors import NotAcceptable, UnsupportedMediaType
from mlflow_pluggable_scoring_server.media import check_content_type, encode, negotiate, parse_accept

OFFERED = ["application/json", "text/csv"]


@pytest.mark.parametrize(
    "header, accepted, expected",
    [
        ("application/json", ["application/json"], "application/json"),
        ("Application/JSON; charset=UTF-8", ["application/json"], "application/json"),
        ("image/png", ["image/*"], "image/png"),
        ('text/csv;header="present"', ["text/csv"], "text/csv"),
    ],
)
def test_content_type_ignores_parameters_and_case(header, accepted, expected):
    assert check_content_type(header, accepted)[0] == expected


@pytest.mark.parametrize("header", [None, "", "text/plain", "application/jsonx", "image/png"])
def test_content_type_mismatch_is_415(header):
    with pytest.raises(UnsupportedMediaType) as e:
        check_content_type(header, ["application/json"])
    assert e.value.status_code == 415 and "application/json" in e.value.message


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("text/*", "text/csv"),
        ("text/csv, application/json;q=0.5", "text/csv"),
        ("application/json;q=0.4, text/csv;q=0.9", "text/csv"),
        ("text/csv;q=0.1, */*", "application/json"),
        ("text/html, application/json", "application/json"),
    ],
)
def test_negotiation(accept, expected):
    assert negotiate(accept, OFFERED) == expected


@pytest.mark.parametrize("accept", ["image/png", "text/html", "application/json;q=0, text/csv;q=0"])
def test_nothing_acceptable_is_406(accept):
    with pytest.raises(NotAcceptable):
        negotiate(accept, OFFERED)


def test_more_specific_accept_range_wins():
    assert parse_accept("*/*;q=0.1, text/*;q=0.5, text/csv")[0] == ("text/csv", 1.0)


@pytest.mark.parametrize(
    "result, expected",
    [
        (np.array([5.5, 6.25]), [5.5, 6.25]),
        (np.array([[0.1, 0.9]], dtype="float32"), [[float(np.float32(0.1)), float(np.float32(0.9))]]),
        (pd.Series([1, 2]), [1, 2]),
        (pd.DataFrame({"a": [1, 2], "b": [3.5, 4.5]}), [{"a": 1, "b": 3.5}, {"a": 2, "b": 4.5}]),
        ({"label": np.int64(3), "scores": np.arange(2)}, {"label": 3, "scores": [0, 1]}),
        ('{"already": "json"}', {"already": "json"}),
    ],
)
def test_json_encoding(result, expected):
    assert json.loads(encode(result, "application/json")) == expected


@pytest.mark.parametrize(
    "result, expected",
    [
        (np.array([5.5, 6.25]), "5.5\n6.25\n"),
        (np.array([[1, 2], [3, 4]]), "1,2\n3,4\n"),
        ("[1.5, 2.5]", "1.5\n2.5\n"),
        (pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "a,b\n1,x\n2,y\n"),
    ],
)
def test_csv_encoding(result, expected):
    assert encode(result, "text/csv").decode() == expected


def test_non_tabular_result_cannot_be_csv():
    with pytest.raises(NotAcceptable):
        encode({"nested": {"a": 1}}, "text/csv")


def test_bytes_pass_through_untouched():
    assert encode(b"\x89PNG...", "image/png") == b"\x89PNG..."


def test_quoted_parameters_may_hold_separators():
    """werkzeug's parsers: a quoted value keeps its ";" and ",", and the parameters after it are still read."""
    media_type, params = check_content_type('application/json; profile="a;b"; charset=utf-8', ["application/json"])
    assert (media_type, params) == ("application/json", {"profile": "a;b", "charset": "utf-8"})
    assert negotiate('text/html; x="a, text/csv", application/json;q=0.5', OFFERED) == "application/json"
    assert parse_accept('text/csv; x="1,2";q=0.2, */*;q=0.1')[0] == ("text/csv", 0.2)
