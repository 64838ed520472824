"""The ceiling for bench/run.py: a Flask app that answers a constant, to run under gunicorn.

What Flask and a gunicorn sync worker cost per request on this machine, with no
routing framework, metrics, plugin or model: no scoring server on them can be faster.
"""

from flask import Flask, Response, request

app = Flask(__name__)
ANSWER = b"[5.8899970054626465, 5.91999626159668, 5.949995517730713]"


@app.get("/ready")
def ready():
    return {"status": "ready"}


@app.post("/predict")
def predict():
    request.get_data()  # read the body, as a scoring server must
    return Response(ANSWER, content_type="application/json")
