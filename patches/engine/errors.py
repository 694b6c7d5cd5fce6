"""One error type for every user-facing failure: it names the node and says how to fix it."""
from __future__ import annotations


class ConduitError(ValueError):
    def __init__(self, node: str, problem: str, fix: str = "") -> None:
        self.node = node
        self.problem = problem
        self.fix = fix
        text = f"[{node}] {problem}"
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)
