"""Train the local platform's TensorFlow model: a small Keras classifier of sklearn's
bundled wine data (13 features, 3 classes), exported as a SavedModel for
``mulambda executor serve``.

Run by up.sh (MULAMBDA_WITH_TENSORFLOW=1) with mulambda's venv python:

    python train_wine_keras.py SAVED_MODEL_DIR FACTS_JSON

The feature scaling is a Normalization layer inside the model, so it takes the raw
features, like the MLServer wine model: ``{"instances": [[13 numbers], ...]}`` gives three
class probabilities per row. FACTS_JSON gets its test accuracy. Seeded: the same model
every time.
"""

import json
import os
import sys
from pathlib import Path

# Before keras is imported: TensorFlow reads its log level at import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

saved_model_dir, facts_path = Path(sys.argv[1]), Path(sys.argv[2])
x, y = load_wine(return_X_y=True)
x = x.astype(np.float32)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
keras.utils.set_random_seed(0)
normalize = keras.layers.Normalization()
normalize.adapt(x_train)
inputs = keras.Input((13,), name="features")
hidden = keras.layers.Dense(16, activation="relu")(normalize(inputs))
outputs = keras.layers.Dense(3, activation="softmax")(hidden)
model = keras.Model(inputs, outputs)
model.compile(
    optimizer=keras.optimizers.Adam(0.01),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
model.fit(x_train, y_train, epochs=30, batch_size=16, verbose=0)
probabilities = np.asarray(model.predict(x_test, verbose=0))
accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
model.export(str(saved_model_dir), verbose=False)
facts_path.write_text(json.dumps({"accuracy": round(accuracy, 4)}) + "\n")
