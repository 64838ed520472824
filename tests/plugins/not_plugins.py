class Plugin:
    """Has none of the plugin methods."""


class HalfPlugin:
    def load_model(self, model_uri):
        return None


NOT_A_CLASS = "just a string"
