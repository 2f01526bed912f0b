"""The executors' HTTP protocols, one module each: wire types, errors and codec (pure).

tfserving   TF Serving REST: typed errors per status, the NaN-tolerant JSON codec,
            status documents, ``/v1/models`` URLs, answer keys per verb
oip         Open Inference Protocol v2: ``/v2/models`` URLs, typed tensors, bodies
            converted to and from TF Serving's dialect

Imported by the clients (:mod:`mulambda.executors`) and the emulator
(:mod:`mulambda.emulator`) alike; nothing here does I/O.
"""
