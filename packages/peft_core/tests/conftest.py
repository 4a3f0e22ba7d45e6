import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from common import parametrize_cases


def pytest_generate_tests(metafunc):
    parametrize_cases(metafunc)
