import pytest

from simulators.lab.runner import running_lab
from simulators.lab.workstation import make_pdf


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab"), users=12) as running:
        yield running


@pytest.fixture(scope="session")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    return {
        "mono3": make_pdf(folder / "mono3.pdf", 3),
        "colour2": make_pdf(folder / "colour2.pdf", 2, frozenset({1, 2})),
        "mixed3": make_pdf(folder / "mixed3.pdf", 3, frozenset({2})),
        "mono1": make_pdf(folder / "mono1.pdf", 1),
        "mono4": make_pdf(folder / "mono4.pdf", 4),
    }
