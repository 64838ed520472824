"""An MLflow model from code (tests/test_rollout.py logs it): answers its model_config's value for every row.

"boom" fails every prediction; "unloadable" fails to load.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class Constant(PythonModel):
    def load_context(self, context):
        self.value = context.model_config["value"]
        if self.value == "unloadable":
            raise RuntimeError("this version cannot be loaded")

    def predict(self, context, model_input, params=None):
        if self.value == "boom":
            raise RuntimeError("this version cannot score")
        return [self.value] * len(model_input)


mlflow.models.set_model(Constant())
