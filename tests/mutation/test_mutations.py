"""The mutation list stays in step with the code (part of the default run; the mutation check itself
is not): every mutation finds its line once, compiles, and names test files that exist."""

from __future__ import annotations

import pytest

from tests.mutation.mutations import MUTATIONS, Mutation
from tests.mutation.run import ROOT, apply


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_to_the_current_tree(m: Mutation) -> None:
    source = (ROOT / m.path).read_text()
    mutated, lineno = apply(source, m)
    assert mutated != source and mutated.splitlines()[lineno - 1].strip() == m.mutant
    compile(mutated, m.path, "exec")
    assert all((ROOT / t.split("::")[0]).is_file() for t in m.tests), m.tests


def test_names_are_unique() -> None:
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)


def test_a_line_not_found_once_is_refused() -> None:
    text = "a = 1\nif x:\n    a = 1\n"
    with pytest.raises(ValueError, match="found 2 times"):
        apply(text, Mutation("dup", "f.py", "a = 1", "a = 2", (), "-"))
    assert apply(text, Mutation("anchored", "f.py", "a = 1", "a = 2", (), "-", after="if x:")) == (
        "a = 1\nif x:\n    a = 2\n",
        3,
    )
    with pytest.raises(ValueError, match="found 0 times"):
        apply(text, Mutation("gone", "f.py", "b = 1", "b = 2", (), "-"))
