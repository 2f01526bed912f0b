"""The launcher: runs the executors administrators ask for in launch requests.

backend     LaunchBackend: what the worker needs of a backend
desired     LaunchBook: the launch requests in force, folded from registrations (pure)
plan        what to create, update and delete; ownership marks (pure)
kube_requests  the Kubernetes API requests of the Kubernetes backend (pure)
kubernetes  KubernetesBackend: server-side apply of StatefulSets and Services
local       LocalProcessBackend: ``executor serve`` + ``companion`` processes per replica
worker      Launcher: consumes registrations, applies plans, reports status events
"""
