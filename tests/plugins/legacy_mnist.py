# The 2020 proof of concept's Keras plugin, kept as it was: the image's pixels resized into one
# row of 784 floats for model.predict, a JSON string out. It must keep working unchanged against
# the Keras digit sample, whose model takes that flat (1, 784) input as the 2020 model did.
from mlflow_pluggable_scoring_server.plugin import BasePlugin

class Plugin(BasePlugin):
    def predict(self, model, img_bytes):
        import json
        import numpy as np
        from io import BytesIO
        from PIL import Image
        img = Image.open(BytesIO(img_bytes))
        img_np = np.resize(img, (1, 28*28))
        data = img_np.astype("float32") / 255
        predictions = model.predict(data)
        return json.dumps(predictions.tolist())

    def load_model(self, model_uri):
        import mlflow.keras
        return mlflow.keras.load_model(model_uri)

    def request_content_type(self):
        return "application/octet-stream"
