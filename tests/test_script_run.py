"""tests/script_run.py, the in-process runner of the suite's command lines: it must capture what a
subprocess's pipes would (the script, argparse, forked DataLoader workers) and exit as the interpreter."""
import os
import sys
import types

import torch

from tests.script_run import REPO, run_main


def _script(main):
    module = types.ModuleType("fake_script")
    module.__file__ = os.path.join(REPO, "fake_script.py")
    module.main = main
    return module


def test_output_of_the_script_and_of_forked_workers_is_captured():
    def main(argv):
        print("from main", argv)
        loader = torch.utils.data.DataLoader(_Shouting(), num_workers=1)  # a forked worker prints to fd 2
        assert [int(x) for x in loader] == [7]
        raise SystemExit(f"refused: {sys.argv[0]}")
    proc = run_main(_script(main), ["--flag", "1"], check=False)
    assert proc.returncode == 1
    assert "from main ['--flag', '1']" in proc.stdout
    assert "worker says hello" in proc.stderr and proc.stderr.strip().endswith("refused: fake_script.py")


def test_exit_codes_are_the_interpreters():
    assert run_main(_script(lambda argv: None), []).returncode == 0
    assert run_main(_script(lambda argv: sys.exit(2)), [], check=False).returncode == 2

    def crash(argv):
        raise ValueError("boom")
    proc = run_main(_script(crash), [], check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ValueError: boom" in proc.stderr


class _Shouting(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        print("worker says hello", file=sys.stderr, flush=True)
        return 7
