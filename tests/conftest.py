"""Shared fixtures: the planted toy model, and each packaged model loaded once per test session."""

import pytest

import probes
from probes import toy

IOI_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "When Tom and James went to the park, James gave a ball to",
    "When Dan and Sid went to the shops, Sid gave an apple to",
    "When Amy and Lisa went to the office, Lisa gave a pen to",
    "After Paul and Mark arrived at the house, Mark handed a key to",
    "Then, Anna and Kate had a long talk, and Kate gave a book to",
    "While Sarah and Emma were at the school, Emma gave a note to",
    "When David and Peter got a drink at the bar, Peter offered it to",
]


@pytest.fixture(scope="session")
def toy_model():
    return toy.build()


@pytest.fixture(scope="session")
def smollm2():
    return probes.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    return probes.load_model("gemma-3-270m")
