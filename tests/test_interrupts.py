"""Ctrl-C in a `refinery` command: never lost, never raised half way through an import or a deferred block."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).parent.parent


def run_script(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{REPO}"})


def test_ctrl_c_during_an_import_is_raised_once_the_import_is_whole(tmp_path: Path) -> None:
    (tmp_path / "slow_module.py").write_text(textwrap.dedent("""
        import os, signal
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(2_000_000):
            pass
        WHOLE = True
    """))
    result = run_script("""
        import sys, time
        from pipeline import interrupts
        try:
            with interrupts.handled():
                import slow_module
                time.sleep(5)
                print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted; module whole:", getattr(sys.modules.get("slow_module"), "WHOLE", False))
    """, tmp_path)
    assert result.stdout.strip() == "interrupted; module whole: True", result.stdout + result.stderr


def test_ctrl_c_in_a_deferred_block_is_raised_when_the_block_ends(tmp_path: Path) -> None:
    result = run_script("""
        import os, signal
        from pipeline import interrupts
        steps = []
        try:
            with interrupts.handled():
                with interrupts.deferred():
                    os.kill(os.getpid(), signal.SIGINT)
                    for _ in range(1_000_000):
                        pass
                    steps.append("block ran to its end")
                steps.append("after the block")
        except KeyboardInterrupt:
            steps.append("interrupted")
        print(steps)
    """, tmp_path)
    assert result.stdout.strip() == "['block ran to its end', 'interrupted']", result.stdout + result.stderr


def test_a_ctrl_c_python_ignored_is_raised_at_the_next_check(tmp_path: Path) -> None:
    result = run_script("""
        import os, signal, sys
        from pipeline import interrupts
        sys.unraisablehook = lambda unraisable: print("ignored", unraisable.exc_type.__name__)
        class Swallows:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1_000_000):
                    pass
        with interrupts.handled():
            Swallows()
            print("went on")
            try:
                interrupts.check()
            except KeyboardInterrupt:
                print("interrupted at the check")
    """, tmp_path)
    assert result.stdout.splitlines()[:3] == ["ignored KeyboardInterrupt", "went on", "interrupted at the check"], \
        result.stdout + result.stderr


def test_the_handler_before_the_command_is_back_after_it() -> None:
    import signal

    from pipeline import interrupts

    before = signal.getsignal(signal.SIGINT)
    with interrupts.handled():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_no_ctrl_c_is_asked_again_once_it_was_raised(tmp_path: Path) -> None:
    (tmp_path / "quick_module.py").write_text(textwrap.dedent("""
        import os, signal
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):
            pass
    """))
    result = run_script("""
        import time
        from pipeline import interrupts
        steps = []
        try:
            with interrupts.handled():
                import quick_module  # deferred: asked again in a moment
                interrupts.check()  # ...but raised here first
        except KeyboardInterrupt:
            steps.append("interrupted")
        time.sleep(0.3)  # Python's own handler is back: a late ask would raise here
        steps.append("no stray Ctrl-C")
        print(steps)
    """, tmp_path)
    assert result.stdout.strip() == "['interrupted', 'no stray Ctrl-C']", result.stdout + result.stderr
