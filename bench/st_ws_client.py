"""A light Streamlit client: one "student" is one websocket session speaking Streamlit's own
protocol to a running ``streamlit run app.py`` server, so 30 of them cost the client almost no CPU
and a class load measures the server, not 30 browser renderers.

What a browser tab does, and so what this does (the protobufs are the ones Streamlit ships,
``streamlit.proto``):

1. open ``ws://HOST:PORT/_stcore/stream`` (subprotocol ``streamlit``);
2. send a ``BackMsg`` ``rerun_script`` with the page's URL path as ``page_name`` (``"lab"``);
3. read ``ForwardMsg``\\ s: ``new_session`` starts a run, ``navigation`` names the page's
   ``page_script_hash`` (``st.navigation``), ``delta``\\ s carry the elements (widgets with
   their ids and labels, metrics, markdown), ``script_finished`` ends the run
   (``FINISHED_EARLY_FOR_RERUN``: another run follows);
4. on a widget change, send ``rerun_script`` with that page hash and ``widget_states`` holding
   every widget's current value (the frontend's WidgetStateManager keeps them the same way:
   a widget's default when it first appears, the server's value when it sets one) with the
   changed one replaced.

Timing: from sending the change to ``script_finished``, and to the moment the run's last metric
or the sizes line arrived (what a student reads: "the updated numbers").

    python bench/st_ws_client.py --url http://127.0.0.1:8501 --students 30 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

RATIO_LABEL = "Training set benign:malignant"  # the lab's ratio select_slider (its label starts so)
STRATEGY_LABEL = "Strategy"
SIZES_PREFIX = "Training: **"  # the lab's sizes line
FINISHED = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}


class ProtocolError(RuntimeError):
    """The server closed the session, sent a compile error, or a run took too long."""


@dataclass
class RunResult:
    """What one script run showed: the numbers a student reads, and how long they took."""

    finished_s: float  # request sent -> script_finished
    numbers_s: float | None  # request sent -> the last metric / sizes line of this run arrived
    metrics: dict[str, str] = field(default_factory=dict)  # metric label -> value as shown
    sizes: str = ""  # the lab's "Training: ..." line
    errors: list[str] = field(default_factory=list)  # st.error bodies and exceptions
    texts: list[str] = field(default_factory=list)  # every markdown / caption body, in order

    @property
    def numbers(self) -> str:
        return " | ".join(f"{k}={v}" for k, v in self.metrics.items()) + " || " + self.sizes


def _widget_state(el) -> WidgetState | None:
    """A widget's state as the browser would report it right after the element arrived (its
    default, or the value the server set); None for buttons (a trigger is sent only on a click)
    and widget kinds this client does not drive."""
    kind = el.WhichOneof("type")
    w = getattr(el, kind)
    ws = WidgetState(id=w.id)
    if kind == "slider":
        if w.type == w.Type.SELECT_SLIDER:
            vals = list(w.raw_value) if w.set_value and len(w.raw_value) else [w.options[int(i)] for i in w.default]
            ws.string_array_value.data.extend(vals)
        else:
            ws.double_array_value.data.extend(list(w.value) if w.set_value else list(w.default))
    elif kind == "checkbox":
        ws.bool_value = w.value if w.set_value else w.default
    elif kind in ("selectbox", "radio"):
        if w.set_value:
            ws.string_value = w.raw_value
        elif w.HasField("default") and len(w.options):
            ws.string_value = w.options[w.default]
        else:
            return None
    elif kind == "number_input":
        ws.double_value = w.value if w.set_value else w.default
    elif kind == "text_input":
        ws.string_value = w.value if w.set_value else w.default
    else:
        return None
    return ws


class StreamlitSession:
    """One browser tab's worth of Streamlit session, without the browser."""

    def __init__(self, base_url: str, page: str = "lab", *, timeout: float = 300.0):
        self.ws_url = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/_stcore/stream"
        self.page = page
        self.timeout = timeout
        self.page_hash = ""  # from the navigation message: what a widget rerun names
        self.widgets: dict[str, object] = {}  # widget id -> its latest element proto (slider, selectbox, ...)
        self.states: dict[str, WidgetState] = {}  # widget id -> the value this tab holds
        self.labels: dict[str, str] = {}  # widget id -> label
        self.runs = 0
        self._ws = None

    async def __aenter__(self) -> "StreamlitSession":
        from websockets.asyncio.client import connect

        self._ws = await connect(self.ws_url, subprotocols=["streamlit"], max_size=None, open_timeout=self.timeout,
                                 ping_interval=None)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._ws is not None:
            await self._ws.close()

    # -- widgets ------------------------------------------------------------------------
    def widget_id(self, label_prefix: str) -> str:
        """The id of the widget whose label starts with ``label_prefix`` (ids are hashes of the
        widget's parameters: found by label, as a student finds it)."""
        hits = [i for i, lab in self.labels.items() if lab.startswith(label_prefix)]
        if len(hits) != 1:
            raise ProtocolError(f"{len(hits)} widgets labelled {label_prefix!r}: {sorted(self.labels.values())}")
        return hits[0]

    def options(self, widget_id: str) -> list[str]:
        return list(self.widgets[widget_id].options)

    def value(self, widget_id: str):
        ws = self.states[widget_id]
        kind = ws.WhichOneof("value")
        v = getattr(ws, kind)
        return list(v.data) if hasattr(v, "data") else v

    # -- runs ---------------------------------------------------------------------------
    async def open(self) -> RunResult:
        """Load the page as a fresh tab does (its URL path as page_name)."""
        msg = BackMsg()
        msg.rerun_script.page_name = self.page
        msg.rerun_script.query_string = ""
        return await self._run(msg)

    async def set(self, label_prefix: str, value) -> RunResult:
        """Change one widget (select_slider / selectbox / radio: the option as shown; checkbox:
        bool; slider: a float) and wait for the run it causes."""
        wid = self.widget_id(label_prefix)
        kind = self.widgets[wid].DESCRIPTOR.name
        old = self.states.get(wid)
        ws = WidgetState(id=wid)
        if kind == "Slider" and self.widgets[wid].type == self.widgets[wid].Type.SELECT_SLIDER:
            ws.string_array_value.data.append(str(value))
        elif kind == "Slider":
            ws.double_array_value.data.append(float(value))
        elif kind == "Checkbox":
            ws.bool_value = bool(value)
        elif kind == "NumberInput":
            ws.double_value = float(value)
        elif old is not None and old.WhichOneof("value") == "string_value" or kind in ("Selectbox", "Radio"):
            ws.string_value = str(value)
        else:
            raise ProtocolError(f"widget {label_prefix!r} ({kind}) is not driven by this client")
        self.states[wid] = ws
        msg = BackMsg()
        msg.rerun_script.page_script_hash = self.page_hash
        msg.rerun_script.query_string = ""
        msg.rerun_script.widget_states.widgets.extend(self.states.values())
        return await self._run(msg)

    async def _run(self, msg: BackMsg) -> RunResult:
        t0 = time.perf_counter()
        await self._ws.send(msg.SerializeToString())
        res = RunResult(finished_s=float("nan"), numbers_s=None)
        deadline = t0 + self.timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ProtocolError(f"no script_finished within {self.timeout:.0f} s")
            try:
                raw = await asyncio.wait_for(self._ws.recv(), left)
            except asyncio.TimeoutError:
                raise ProtocolError(f"no script_finished within {self.timeout:.0f} s") from None
            fwd = ForwardMsg()
            fwd.ParseFromString(raw)
            kind = fwd.WhichOneof("type")
            if kind == "new_session":  # a run starts: what it shows replaces the last run's
                res.metrics, res.sizes, res.errors, res.texts, res.numbers_s = {}, "", [], [], None
            elif kind == "navigation":
                self.page_hash = fwd.navigation.page_script_hash
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                self._element(fwd.delta.new_element, res, time.perf_counter() - t0)
            elif kind == "session_event" and fwd.session_event.WhichOneof("type") == "script_compilation_exception":
                raise ProtocolError(f"compile error: {fwd.session_event.script_compilation_exception.message}")
            elif kind == "script_finished":
                if fwd.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                    raise ProtocolError("the script did not compile")
                if fwd.script_finished in FINISHED:
                    res.finished_s = time.perf_counter() - t0
                    self.runs += 1
                    return res
                # FINISHED_EARLY_FOR_RERUN: the next run follows on its own

    def _element(self, el, res: RunResult, t: float) -> None:
        kind = el.WhichOneof("type")
        if kind == "metric":
            res.metrics[el.metric.label] = el.metric.body
            res.numbers_s = t
        elif kind == "markdown":
            res.texts.append(el.markdown.body)
            if el.markdown.body.startswith(SIZES_PREFIX):
                res.sizes = el.markdown.body
                res.numbers_s = t
        elif kind == "alert" and el.alert.format == el.alert.ERROR:
            res.errors.append(el.alert.body)
        elif kind == "exception":
            res.errors.append(f"{el.exception.type}: {el.exception.message}")
        elif hasattr(getattr(el, kind), "id") and hasattr(getattr(el, kind), "label"):
            w = getattr(el, kind)
            if not w.id:
                return
            self.widgets[w.id] = w
            self.labels[w.id] = w.label
            if w.id not in self.states or getattr(w, "set_value", False):
                state = _widget_state(el)
                if state is not None:
                    self.states[w.id] = state


# ----------------------------------------------------------------------------- a class
def pct(values, q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``; None when there are none."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summary(values) -> dict:
    vals = [v for v in values if v is not None]
    return {"n": len(vals), "p50_s": pct(vals, 50), "p95_s": pct(vals, 95), "max_s": max(vals) if vals else None,
            "mean_s": statistics.fmean(vals) if vals else None}


async def run_class(base_url: str, students: int, rounds: int, *, page: str = "lab", seed: int = 0,
                    strategies: bool = True, timeout: float = 300.0, before_moves=None, on_round=None) -> dict:
    """``students`` sessions open the lab; each picks a strategy (student i the i-th, cycling,
    when ``strategies``: a class asks different questions), then in every round all move the
    ratio slider one step at once (each its own random direction, turning at the ends). Returns
    the open / setup times and, for the moves, p50 / p95 / max of slider -> numbers and of
    slider -> script_finished, with every run's numbers checked to have changed."""
    if students <= 0:
        return {"students": 0, "rounds": rounds, "moves": summary([]), "finished": summary([]), "open": summary([]),
                "unchanged": 0, "errors": []}
    rng = random.Random(seed)
    sessions = [StreamlitSession(base_url, page, timeout=timeout) for _ in range(students)]
    errors: list[str] = []
    for s in sessions:
        await s.__aenter__()
    try:
        opened = await asyncio.gather(*(s.open() for s in sessions))
        for r in opened:
            errors += r.errors
        last = {id(s): r for s, r in zip(sessions, opened)}
        if strategies:
            names = sessions[0].options(sessions[0].widget_id(STRATEGY_LABEL))
            picked = await asyncio.gather(*(s.set(STRATEGY_LABEL, names[i % len(names)])
                                            for i, s in enumerate(sessions)))
            for s, r in zip(sessions, picked):
                last[id(s)] = r
                errors += r.errors
        moves, finished, unchanged = [], [], 0
        if before_moves:  # e.g. the bench reads the server's CPU time here: the moves alone
            before_moves()
        direction = {id(s): rng.choice((-1, 1)) for s in sessions}
        for rnd in range(rounds):
            targets = []
            for s in sessions:
                wid = s.widget_id(RATIO_LABEL)
                opts = s.options(wid)
                i = opts.index(s.value(wid)[0])
                if not 0 <= i + direction[id(s)] < len(opts):
                    direction[id(s)] *= -1
                targets.append(opts[i + direction[id(s)]])
            results = await asyncio.gather(*(s.set(RATIO_LABEL, t) for s, t in zip(sessions, targets)))
            for s, r in zip(sessions, results):
                errors += r.errors
                if r.numbers == last[id(s)].numbers or not r.metrics:
                    unchanged += 1
                last[id(s)] = r
                moves.append(r.numbers_s)
                finished.append(r.finished_s)
            if on_round:
                on_round(rnd, results)
    finally:
        for s in sessions:
            await s.__aexit__()
    return {"students": students, "rounds": rounds, "moves": summary(moves), "finished": summary(finished),
            "open": summary([r.finished_s for r in opened]), "unchanged": unchanged, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8501", help="the running server")
    ap.add_argument("--page", default="lab")
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--same-strategy", action="store_true", help="every student keeps the default strategy")
    args = ap.parse_args()
    out = asyncio.run(run_class(args.url, args.students, args.rounds, page=args.page,
                                strategies=not args.same_strategy))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
