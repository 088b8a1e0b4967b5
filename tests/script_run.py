"""Run a script's command line in this process: `main(argv)`, which is all that its
`if __name__ == "__main__": main()` does.

A subprocess costs about 5 s of interpreter start and torch import on the CI machine before it does
anything, and the suite runs about a hundred command lines. Here the command runs in the test's own
process with file descriptors 1 and 2 redirected to files, so what the script prints, what
argparse prints, and what forked DataLoader workers print (bad-video reports) are all captured, as
a subprocess's pipes would capture them. The result is a `subprocess.CompletedProcess`: an exit
with a message (`SystemExit("...")`) gives return code 1 and the message on stderr, an uncaught
exception return code 1 and its traceback, as the interpreter would.

The torchrun tests, and one command line per script, still start real processes.
"""
import contextlib
import os
import subprocess
import sys
import tempfile
import traceback

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _captured_fds():
    """Redirects fds 1 and 2 (and sys.stdout / sys.stderr onto them) to two files; yields a list
    that holds (stdout, stderr) text once the block is left."""
    files = [tempfile.TemporaryFile() for _ in range(2)]
    saved_sys = sys.stdout, sys.stderr
    for stream in saved_sys:
        stream.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    result = []
    try:
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
                                  for fd in (1, 2))
        yield result
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved_sys
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        for f in files:
            f.seek(0)
            result.append(f.read().decode("utf-8", errors="replace"))
            f.close()


def run_main(module, args, check=True, cwd=REPO, threads=None):
    """`python <module>.py ARGS` in this process, from `cwd`; threads: torch's intra-op threads for
    the call (OMP_NUM_THREADS of the subprocess it replaces). Raises AssertionError with the output
    when check and the return code is not 0."""
    script = os.path.basename(module.__file__)
    saved = sys.argv, os.getcwd(), torch.get_num_threads()
    code = 0
    with _captured_fds() as output:
        sys.argv = [script, *args]  # argparse names the program from it
        os.chdir(cwd)
        if threads:
            torch.set_num_threads(threads)
        try:
            module.main(list(args))
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except Exception:  # noqa: BLE001 -- reported as the interpreter reports it
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved[0]
            os.chdir(saved[1])
            torch.set_num_threads(saved[2])
    proc = subprocess.CompletedProcess([script, *args], code, *output)
    if check and code != 0:
        raise AssertionError(f"exit {code}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def run_process(script, args, check=True, timeout=900):
    """`OMP_NUM_THREADS=1 python SCRIPT ARGS` in a real process, from the repository: the README's
    commands. Raises AssertionError with the output when check and the return code is not 0."""
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc
