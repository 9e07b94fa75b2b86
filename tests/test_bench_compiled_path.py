"""tools/bench_compiled_path.py runs end to end (tiny sizes) and prints its ratios."""

from __future__ import annotations

import pytest

from pipeline import direct_record_writer
from pipeline.router_receive import compiled_receive_batch
from tools import bench_compiled_path


@pytest.mark.skipif(compiled_receive_batch() is None or direct_record_writer.lay_out is None,
                    reason="the compiled parts were not built here")
def test_the_benchmark_compares_both_parts_with_their_python_twins(tmp_path, capsys) -> None:
    assert bench_compiled_path.main(["--messages", "400", "--batches", "3", "--rounds", "2", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("ratio compiled / python:") == 2
    assert list(tmp_path.iterdir()) == []  # its log is gone
