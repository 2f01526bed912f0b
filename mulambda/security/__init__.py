"""Who may do what: Kafka ACLs per role, derived from the topic catalog (pure)."""

from mulambda.security.acls import ROLES, AclRule, role_acls

__all__ = ["ROLES", "AclRule", "role_acls"]
