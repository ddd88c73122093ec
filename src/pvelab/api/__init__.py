"""The lab's HTTPS API: routes, handlers, server (HTTP only; PVE semantics live in backend)."""
