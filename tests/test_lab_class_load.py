"""A class against a real ``streamlit run app.py``, without browsers: students are Streamlit
websocket sessions (``bench/st_ws_client.py``, the driver of ``bench/bench_lab.py``'s class
figure). Two of them open the Imbalance Lab at once, move the ratio slider, and each gets a
finished run with new numbers; the second asking the same question gets the cached answer."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import pytest

from browser_util import lab_server

pytest.importorskip("websockets")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from st_ws_client import RATIO_LABEL, StreamlitSession, run_class  # noqa: E402

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_synth_root):
    with lab_server(tmp_path_factory.mktemp("class_load"), tiny_synth_root) as srv:
        yield srv


async def _two_students(url: str):
    async with StreamlitSession(url, timeout=120) as a, StreamlitSession(url, timeout=120) as b:
        opened = await asyncio.gather(a.open(), b.open())
        wid = a.widget_id(RATIO_LABEL)
        options = a.options(wid)
        target = options[options.index(a.value(wid)[0]) - 1]  # one step left of 1:1
        moved = await asyncio.gather(a.set(RATIO_LABEL, target), b.set(RATIO_LABEL, target))
        return opened, moved, target


def test_two_students_moving_the_slider_at_once_each_get_new_numbers(server):
    opened, moved, target = asyncio.run(_two_students(server.url))
    for before, after in zip(opened, moved):
        assert not before.errors and not after.errors, (before.errors, after.errors)
        assert {"Accuracy", "GMean", "Sensitivity", "Specificity"} <= set(after.metrics), after.metrics
        assert math.isfinite(after.finished_s) and after.numbers_s is not None  # script_finished came
        assert after.sizes != before.sizes and after.numbers != before.numbers  # the ratio moved the numbers
    assert moved[0].numbers == moved[1].numbers  # the same question, the same answer
    captions = [t for r in moved for t in r.texts if t.startswith("**Measured**")]
    assert any("answer cached" in c for c in captions), captions  # asked twice at once: answered once
    assert "SYNTHETIC" in " ".join(opened[0].texts)
    print(f"moved to {target}: numbers after {[round(r.numbers_s * 1000) for r in moved]} ms")


def test_the_bench_class_driver_reports_every_move(server):
    out = asyncio.run(run_class(server.url, 2, 2, timeout=120))
    assert out["moves"]["n"] == 4 and out["unchanged"] == 0 and not out["errors"], out
    assert out["finished"]["p95_s"] >= out["moves"]["p95_s"] > 0  # numbers arrive before the run finishes
    assert asyncio.run(run_class(server.url, 0, 2))["moves"]["n"] == 0  # no students: no crash
