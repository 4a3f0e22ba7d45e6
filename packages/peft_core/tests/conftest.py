import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from common import parametrize_cases  # noqa: E402


def pytest_generate_tests(metafunc):  # noqa: ANN001, ANN201
    parametrize_cases(metafunc)
