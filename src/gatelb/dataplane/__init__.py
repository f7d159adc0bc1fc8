"""Pure compilers from the resolved desired state to nftables transactions."""

from gatelb.model import ResolvedState

from .render import render_delete, render_diff, render_full
from .ruleset import Ruleset, compile_ruleset


def compile_full(state: ResolvedState, generation: int = 1) -> str:
    """The nft script that loads `state` into an empty (or replaced) table."""
    return render_full(compile_ruleset(state), generation)


__all__ = ["Ruleset", "compile_full", "compile_ruleset", "render_delete", "render_diff", "render_full"]
