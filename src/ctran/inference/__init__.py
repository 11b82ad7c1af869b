"""Using a trained model: predict, re-condition on known labels, explain, export, import official weights.

``ctran.load(path)`` returns a ``Predictor``; the CLI commands ``predict``, ``explain``, ``export`` and
``convert-official`` are thin layers over this package.
"""

from ctran.inference.explain import Explanation
from ctran.inference.influence import Change, Influence
from ctran.inference.predictor import Features, Prediction, Predictor, load
from ctran.inference.suggest import Suggestion

__all__ = ["Change", "Explanation", "Features", "Influence", "Prediction", "Predictor", "Suggestion", "load"]
