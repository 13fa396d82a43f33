"""What a SpeculativeService may put into its pods: images from an allow-list, env only from harmless sources.

Whoever can create a SpeculativeService gets pods run by the operator's service account, so the CR must not
be a way around the cluster's own rules: without this, any image could run, and `env.valueFrom.secretKeyRef`
could read every Secret of the namespace into a pod the creator controls.
"""

from __future__ import annotations

from smartspec_operator.settings import OperatorSettings
from smartspec_operator.spec import ServiceSpec

HARMLESS_ENV_SOURCES = frozenset({"fieldRef", "resourceFieldRef", "configMapKeyRef"})


def violations(spec: ServiceSpec, settings: OperatorSettings) -> list[str]:
    """Why the operator refuses to run this spec (empty: it may)."""
    allowed = settings.allowed_image_prefixes()
    out = []
    pods = [("target", spec.target.image, spec.target.env)]
    if spec.draft is not None:
        pods.append(("draft", spec.draft.image, spec.draft.env))
    images = [*pods, ("controller", spec.controller.image, [])]
    for role, image, _ in images:
        if image is not None and not any(image == a or (a.endswith("/") and image.startswith(a)) for a in allowed):
            out.append(f"{role}.image {image!r} is not allowed (operator.allowedImages: "
                       f"{', '.join(allowed) or 'the default images only'})")
    for role, _, env in pods:
        for var in env:
            sources = set(var.value_from or {})
            if sources - HARMLESS_ENV_SOURCES and not settings.allow_env_from_secrets:
                out.append(f"{role}.env {var.name}: valueFrom {', '.join(sorted(sources - HARMLESS_ENV_SOURCES))} is "
                           "not allowed (operator.allowEnvFromSecrets)")
    return out
