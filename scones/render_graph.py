"""Render the state machine's graph from its ASL file to a PNG, like the Step Functions console.

The main path (StartAt, then each `Next`) runs top to bottom between Start and End markers;
the states reached only by a `Catch` (the named failures) stand in a column on the right,
joined by dashed arrows. Output is deterministic: same ASL, same bytes.

    python -m scones.render_graph [--asl statemachine/image_classification.asl.json]
                                   [--out docs/stepfunctions_graph.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from scones.settings import REPO_ROOT

DEFAULT_ASL = REPO_ROOT / "statemachine" / "image_classification.asl.json"
DEFAULT_OUT = REPO_ROOT / "docs" / "stepfunctions_graph.png"

DPI = 100
BOX_WIDTH = 3.6
TASK_HEIGHT = 1.05
SIDE_HEIGHT = 0.78
SIDE_PITCH = 1.05  # vertical distance between the side column's boxes
MAIN_X = 0.0
SIDE_X = 6.4
MARKER_RADIUS = 0.36
# (fill, edge) of each state type's box; the arrows' and markers' colours.
BOX_COLOURS = {
    "Task": ("#e8f1fb", "#2e73b8"),
    "Fail": ("#fdecea", "#c7311a"),
    "Succeed": ("#e9f6ec", "#1d8102"),
}
OTHER_BOX_COLOURS = ("#f2f3f3", "#545b64")
NEXT_COLOUR = "#232f3e"
CATCH_COLOUR = "#c7311a"
MARKER_COLOUR = "#545b64"


@dataclass
class Node:
    """A state's box: its centre, size and the lines of text inside."""

    name: str
    kind: str
    x: float
    y: float
    height: float
    lines: list[str] = field(default_factory=list)


@dataclass
class Graph:
    """The laid-out graph: state boxes, Next and Catch edges, Start/End marker positions."""

    nodes: dict[str, Node]
    next_edges: list[tuple[str, str]]
    catch_edges: list[tuple[str, str]]
    start_y: float
    end_y: float | None
    end_state: str | None
    bottom: float


def main_path(asl: dict[str, Any]) -> list[str]:
    """The states from StartAt following `Next` until a state ends the execution."""
    states = asl["States"]
    path = [asl["StartAt"]]
    while "Next" in states[path[-1]] and states[path[-1]]["Next"] not in path:
        path.append(states[path[-1]]["Next"])
    return path


def catch_edges(asl: dict[str, Any]) -> list[tuple[str, str]]:
    """Every `(state, catch target)` pair, in the order of the ASL file."""
    return [
        (name, catcher["Next"])
        for name, state in asl["States"].items()
        for catcher in state.get("Catch", [])
    ]


def retry_summary(state: dict[str, Any]) -> str:
    """One line naming the retried errors and their attempts, e.g. `Lambda.* ×3`."""
    parts = []
    for retrier in state.get("Retry", []):
        errors = retrier["ErrorEquals"]
        if all(error.startswith("Lambda.") for error in errors):
            label = "Lambda.*"
        else:
            label = ", ".join(errors)
        parts.append(f"{label} ×{retrier.get('MaxAttempts', 3)}")
    jitter = any(r.get("JitterStrategy") == "FULL" for r in state.get("Retry", []))
    return ("Retry " + " · ".join(parts) + (", jitter" if jitter else "")) if parts else ""


def state_lines(name: str, state: dict[str, Any], caught: list[str]) -> list[str]:
    """The text inside a state's box: name, type line, retry or catch details."""
    kind = state["Type"]
    if kind == "Task":
        resource = state.get("Resource", "")
        service = "Lambda: Invoke" if resource.endswith(":lambda:invoke") else resource
        return [name, service, retry_summary(state)]
    if kind == "Fail":
        error = state.get("Error", "")
        extra = [e for e in caught if e != error]
        second = f"Fail · Error {error}" if error else "Fail"
        return [name, second] + ([f"catches {', '.join(extra)}"] if extra else [])
    return [name, kind]


def layout(asl: dict[str, Any]) -> Graph:
    """Place the main path top to bottom and the catch targets in the right-hand column."""
    states = asl["States"]
    path = main_path(asl)
    catches = catch_edges(asl)
    side = [name for name in states if name not in path]
    # Order the side column by where its arrows come from, so they cross as little as possible.
    rank = {name: i for i, name in enumerate(path)}
    sources = {name: [rank[s] for s, t in catches if t == name and s in rank] for name in side}
    side.sort(key=lambda n: (sum(sources[n]) / len(sources[n]) if sources[n] else len(path), n))

    side_span = (len(side) - 1) * SIDE_PITCH if side else 0.0
    main_pitch = max(1.9, (side_span + 2.2) / (len(path) + 1))
    start_y = 0.0
    nodes: dict[str, Node] = {}
    for i, name in enumerate(path):
        nodes[name] = Node(
            name,
            states[name]["Type"],
            MAIN_X,
            -(i + 1) * main_pitch,
            TASK_HEIGHT,
            state_lines(name, states[name], []),
        )
    last = path[-1]
    ends = states[last].get("End", False) or states[last]["Type"] == "Succeed"
    end_y = -(len(path) + 1) * main_pitch if ends else None
    main_bottom = end_y if end_y is not None else nodes[last].y
    side_top = (start_y + main_bottom) / 2 + side_span / 2
    for j, name in enumerate(side):
        caught = [
            error
            for state in states.values()
            for catcher in state.get("Catch", [])
            if catcher["Next"] == name
            for error in catcher["ErrorEquals"]
        ]
        nodes[name] = Node(
            name,
            states[name]["Type"],
            SIDE_X,
            side_top - j * SIDE_PITCH,
            SIDE_HEIGHT,
            state_lines(name, states[name], sorted(set(caught))),
        )
    next_edges = [(name, state["Next"]) for name, state in states.items() if "Next" in state]
    bottom = min([main_bottom - MARKER_RADIUS] + [n.y - n.height / 2 for n in nodes.values()])
    return Graph(nodes, next_edges, catches, start_y, end_y, last if ends else None, bottom)


def _draw_box(ax: Any, node: Node) -> None:
    fill, edge = BOX_COLOURS.get(node.kind, OTHER_BOX_COLOURS)
    ax.add_patch(
        FancyBboxPatch(
            (node.x - BOX_WIDTH / 2, node.y - node.height / 2),
            BOX_WIDTH,
            node.height,
            boxstyle="round,pad=0,rounding_size=0.12",
            facecolor=fill,
            edgecolor=edge,
            linewidth=1.6,
            zorder=3,
        )
    )
    lines = [line for line in node.lines if line]
    pitch = 0.26 if node.kind == "Task" else 0.22
    top = node.y + pitch * (len(lines) - 1) / 2
    for k, line in enumerate(lines):
        ax.text(
            node.x,
            top - k * pitch,
            line,
            ha="center",
            va="center",
            zorder=4,
            fontsize=11 if k == 0 else 8.5,
            fontweight="bold" if k == 0 else "normal",
            color="#16191f" if k == 0 else "#414750",
        )


def _draw_marker(ax: Any, x: float, y: float, label: str) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x - 0.55, y - MARKER_RADIUS / 1.4),
            1.1,
            2 * MARKER_RADIUS / 1.4,
            boxstyle="round,pad=0,rounding_size=0.25",
            facecolor=MARKER_COLOUR,
            edgecolor=MARKER_COLOUR,
            zorder=3,
        )
    )
    ax.text(x, y, label, ha="center", va="center", color="white", fontsize=10, zorder=4)


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], catch: bool) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            shrinkA=0,
            shrinkB=1,
            color=CATCH_COLOUR if catch else NEXT_COLOUR,
            linestyle=(0, (4, 3)) if catch else "-",
            linewidth=1.3 if catch else 1.6,
            zorder=2,
        )
    )


def draw(graph: Graph, title: str) -> Figure:
    """The graph as a matplotlib figure (Agg canvas, no pyplot state)."""
    left, right = MAIN_X - BOX_WIDTH / 2 - 0.4, SIDE_X + BOX_WIDTH / 2 + 0.4
    top, bottom = graph.start_y + 1.2, graph.bottom - 1.0
    fig = Figure(figsize=((right - left) * 0.95, (top - bottom) * 0.95), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(left + 0.2, top - 0.35, title, ha="left", va="center", fontsize=12, color="#16191f")

    nodes = graph.nodes
    first = max((n for n in nodes.values() if n.x == MAIN_X), key=lambda n: n.y)
    _draw_marker(ax, MAIN_X, graph.start_y, "Start")
    _arrow(
        ax,
        (MAIN_X, graph.start_y - MARKER_RADIUS / 1.4),
        (MAIN_X, first.y + first.height / 2),
        catch=False,
    )
    if graph.end_y is not None and graph.end_state is not None:
        last = nodes[graph.end_state]
        _draw_marker(ax, MAIN_X, graph.end_y, "End")
        _arrow(
            ax,
            (MAIN_X, last.y - last.height / 2),
            (MAIN_X, graph.end_y + MARKER_RADIUS / 1.4),
            catch=False,
        )
    for source, target in graph.next_edges:
        a, b = nodes[source], nodes[target]
        _arrow(ax, (a.x, a.y - a.height / 2), (b.x, b.y + b.height / 2), catch=False)
    # Fan each state's catch arrows out along its right edge so they do not start on one point.
    by_source: dict[str, list[str]] = {}
    for source, target in graph.catch_edges:
        by_source.setdefault(source, []).append(target)
    for source, targets in by_source.items():
        a = nodes[source]
        targets = sorted(targets, key=lambda t: -nodes[t].y)
        span = a.height * 0.7
        for k, target in enumerate(targets):
            offset = span / 2 - span * k / (len(targets) - 1) if len(targets) > 1 else 0.0
            b = nodes[target]
            _arrow(ax, (a.x + BOX_WIDTH / 2, a.y + offset), (b.x - BOX_WIDTH / 2, b.y), catch=True)
    for node in nodes.values():
        _draw_box(ax, node)

    ax.legend(
        handles=[
            Line2D([], [], color=NEXT_COLOUR, linewidth=1.6, label="Next"),
            Line2D(
                [],
                [],
                color=CATCH_COLOUR,
                linewidth=1.3,
                linestyle=(0, (4, 3)),
                label="Catch → named failure",
            ),
        ],
        loc="lower left",
        frameon=False,
        fontsize=9,
    )
    return fig


def render(asl_path: Path = DEFAULT_ASL, out_path: Path = DEFAULT_OUT) -> Path:
    """Render the ASL file's graph to `out_path` as a PNG with fixed metadata."""
    asl = json.loads(asl_path.read_text(encoding="utf-8"))
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # a user's matplotlibrc must not change the bytes
        fig = draw(layout(asl), asl_path.name)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # No "Software" (version) text chunk and no timestamps: the bytes depend on the ASL only.
        fig.savefig(out_path, format="png", dpi=DPI, metadata={"Software": None})
    return out_path


def main(argv: list[str] | None = None) -> int:
    """CLI: render the graph and print where it went."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asl", type=Path, default=DEFAULT_ASL, help="ASL definition file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    args = parser.parse_args(argv)
    print(render(args.asl, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
