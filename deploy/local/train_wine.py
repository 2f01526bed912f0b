"""Train the local platform's real model: a scikit-learn wine classifier (sklearn's
bundled wine data, 13 features, 3 classes) in MLServer's model folder layout.

Run by up.sh with the MLServer venv's python, so the pickle matches the scikit-learn
MLServer loads it with:

    python train_wine.py MODEL_DIR NAME VERSION FACTS_JSON

MODEL_DIR gets ``model.joblib`` and ``model-settings.json`` (``predict_proba``: the model
answers three class probabilities per row); FACTS_JSON (outside the model folder, so it
is not uploaded) the test accuracy and two test rows with their probabilities.
"""

import json
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

model_dir, name, version, facts_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
x, y = load_wine(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=0, stratify=y)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
model_dir.mkdir(parents=True, exist_ok=True)
joblib.dump(model, model_dir / "model.joblib")
settings = {
    "name": name,
    "implementation": "mlserver_sklearn.SKLearnModel",
    "parameters": {
        "uri": "./model.joblib",
        "version": version,
        "extra": {"predict_fn": "predict_proba"},
    },
}
# Written last: the folder is complete once it has its settings.
(model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
facts = {
    "accuracy": round(float(model.score(x_test, y_test)), 4),
    "rows": x_test[:2].tolist(),
    "probabilities": model.predict_proba(x_test[:2]).tolist(),
}
Path(facts_path).write_text(json.dumps(facts) + "\n")
