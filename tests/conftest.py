"""Keep the suite's disk use small.

The end-to-end tests train the papers' R(2+1)D-18 / R3D-18 and write real checkpoints (up to
400 MB each, with optimizer and momentum-encoder state). pytest keeps every test's tmp_path until
the run ends and keeps the last three runs, which added up to 12 GB per run and filled the disk
of a shared CI machine. Here a test's tmp_path is deleted as soon as the test has passed; a failed
test's directory stays for debugging.

torchvision 0.29 deprecates its image codecs (distill_modality.py reads NTU's 16-bit depth PNGs and
flow JPEGs with them) in favour of torchcodec, which is not a dependency. A script run from the
command line does not show that DeprecationWarning; the in-process command lines of the suite
(tests/script_run.py) would show it once per frame read, so it is filtered here.
"""
import shutil

import pytest

_FAILED = pytest.StashKey[bool]()


def pytest_configure(config):
    config.addinivalue_line("filterwarnings",
                            "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def tmp_path(tmp_path, request):
    yield tmp_path
    if not request.node.stash.get(_FAILED, False):
        shutil.rmtree(tmp_path, ignore_errors=True)
