"""A bare BentoML service: one route, no models, nothing of ours. What start-up costs BentoML
itself in a container, next to which `python -m loadtest.containers` times rnnserve's image
(built from the same base and Dockerfile template, started the same way, alternately)."""

from __future__ import annotations

import bentoml


@bentoml.service
class Bare:
    @bentoml.api
    def echo(self, text: str) -> str:
        """The text, back."""
        return text
