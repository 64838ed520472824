"""Score the sample wines over the Open Inference Protocol (V2) with Triton's client, as a KServe user would.

    python plugin_samples/sklearn_wine/v2_client.py --url 127.0.0.1:5005

The model's metadata names its inputs (one per feature column) and their datatype; the columns
go as binary tensors, tritonclient's default.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--url", default="127.0.0.1:5005", help="the server, as host:port")
p.add_argument("--model", default="mlflow-model", help="the model's name (--model-name of the server)")
args = p.parse_args()

table = json.loads((Path(__file__).parent / "data" / "predict-wine-quality.json").read_text())
rows = np.array(table["data"])
client = httpclient.InferenceServerClient(args.url)
inputs = []
for spec in client.get_model_metadata(args.model)["inputs"]:
    column = rows[:, table["columns"].index(spec["name"])].reshape(-1, 1)
    tensor = httpclient.InferInput(spec["name"], list(column.shape), spec["datatype"])
    tensor.set_data_from_numpy(column.astype(httpclient.triton_to_np_dtype(spec["datatype"])))
    inputs.append(tensor)
result = client.infer(args.model, inputs)
print(result.as_numpy("output-1").ravel().round(2).tolist())
