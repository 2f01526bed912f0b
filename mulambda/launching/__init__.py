"""Launching executors: the launcher worker, its backends, and an executor pod's manifests.

backend     LaunchBackend: what the worker needs of a backend
desired     LaunchBook: the launch requests in force, folded from registrations (pure)
plan        what to create, update and delete; ownership marks (pure)
manifests   the Kubernetes manifests of an executor pod (TF Serving + companion), the
            companion's arguments; ``apply_deployment`` (``executors launch``)
kube_requests  the Kubernetes API requests of the Kubernetes backend (pure)
kubernetes  KubernetesBackend: server-side apply of StatefulSets and Services
local       LocalProcessBackend: ``executor serve`` + ``companion`` processes per replica
worker      Launcher: consumes registrations, applies plans, reports status events
"""
