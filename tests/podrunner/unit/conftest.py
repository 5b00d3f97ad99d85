import os
import sys

import pytest

# `podrunner` is the package one level up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from podrunner.objects import Store, load_files, pod_from  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture_path(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture
def ordering_pod():
    return pod_from(load_files([fixture_path("pod-ordering.yaml")])[0], uid="uid-1")


@pytest.fixture
def store():
    return Store(load_files([fixture_path("objects.yaml")]))
