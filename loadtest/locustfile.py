"""Locust load test for rnnserve: a plausible traffic mix with answers checked.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000          # web UI
    python -m loadtest.run_load                                            # headless, stepped

User classes and weights: pixel arrays 5, image uploads 2, next character 2, generation 1.
Every answer is checked: a non-2xx, a malformed body or a wrong digit is a failure.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, task

from loadtest.payloads import PROMPTS, digits

DIGITS = digits()
WAIT = between(0.0, 0.05)


class PixelClient(FastHttpUser):
    """One 28x28 array per request, the commonest call."""

    weight = 5
    wait_time = WAIT

    @task
    def classify_pixels(self) -> None:
        digit = random.choice(DIGITS)
        body = {"images": [{"pixels": digit.pixels}]}
        with self.client.post(
            "/classify_pixels", json=body, catch_response=True, name="/classify_pixels"
        ) as resp:
            try:
                answer = resp.json()[0]
                if answer["digit"] != digit.label or len(answer["probabilities"]) != 10:
                    resp.failure(f"wrong answer {answer.get('digit')} for a {digit.label}")
            except Exception as exc:  # malformed body
                resp.failure(f"malformed answer: {exc}: {resp.text[:200]}")


class ImageClient(FastHttpUser):
    """A PNG upload of a real digit."""

    weight = 2
    wait_time = WAIT

    @task
    def classify_image(self) -> None:
        digit = random.choice(DIGITS)
        with self.client.post(
            "/classify_image",
            files={"image": ("digit.png", digit.png, "image/png")},
            catch_response=True,
            name="/classify_image",
        ) as resp:
            try:
                if resp.json()["digit"] != digit.label:
                    resp.failure(f"wrong answer for a {digit.label}: {resp.text[:200]}")
            except Exception as exc:
                resp.failure(f"malformed answer: {exc}: {resp.text[:200]}")


class TextClient(FastHttpUser):
    """Next-character suggestions as someone types, and the occasional generation."""

    weight = 3
    wait_time = WAIT

    @task(2)
    def next_char(self) -> None:
        prompt = random.choice(PROMPTS)
        cut = random.randint(len(prompt) // 2, len(prompt))
        with self.client.post(
            "/next_char",
            json={"text": prompt[:cut], "k": 5},
            catch_response=True,
            name="/next_char",
        ) as resp:
            try:
                probs = [c["probability"] for c in resp.json()["candidates"]]
                if len(probs) != 5 or probs != sorted(probs, reverse=True) or sum(probs) > 1.001:
                    resp.failure(f"malformed candidates: {resp.text[:200]}")
            except Exception as exc:
                resp.failure(f"malformed answer: {exc}: {resp.text[:200]}")

    @task(1)
    def generate(self) -> None:
        body = {
            "prompt": random.choice(PROMPTS),
            "length": 40,
            "temperature": 0.8,
            "seed": random.randint(0, 1000),
        }
        with self.client.post(
            "/generate", json=body, catch_response=True, name="/generate"
        ) as resp:
            try:
                if len(resp.json()["text"]) != 40:
                    resp.failure(f"wrong length: {resp.text[:200]}")
            except Exception as exc:
                resp.failure(f"malformed answer: {exc}: {resp.text[:200]}")
