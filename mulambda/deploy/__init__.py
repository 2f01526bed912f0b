"""Kubernetes resources MuLambda derives from its own definitions (deploy/k8s)."""
