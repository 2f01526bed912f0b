"""SavedModels in MinIO/S3 in the layout TF Serving reads.

``layout`` (names, versions, object keys, S3 limits, the local SavedModel scan) and
``manifest`` (the per-version file list that commits an upload) are pure rules;
``store`` (:class:`~mulambda.models.store.ModelStore`) is the MinIO I/O that follows them.
"""
