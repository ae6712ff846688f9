"""Bug-fix tasks by procedural AST mutation of code that already has tests (HumanEval, Python repos).

A mutation is found on the AST and written back as a *minimal text edit*: the mutated node is
unparsed and spliced over the node's source span, so comments and formatting elsewhere survive and
the gold diff is one or two lines. Every edit is checked by re-parsing: the new file's AST must
equal the original AST with exactly that node changed (when precedence needs them, the edit is
retried in parentheses), so no operator can produce a syntax error or a different change than it
claims. Mutants whose AST equals the original (e.g. swapping `max(a, a)`) are dropped.

Operators (each a classic bug class from mutation testing):
  flip_compare      `<` -> `<=` / `>`, `==` -> `!=`, `in` -> `not in`, `is` -> `is not`
  off_by_one        `range(a, b)` -> `range(a, b + 1)`, `x[i]` -> `x[i + 1]`, slice bounds +-1
  swap_args         `f(a, b)` -> `f(b, a)` (adjacent positional arguments)
  drop_statement    delete one simple statement from a block of two or more
  change_constant   `0` <-> `1`, `n` -> `n + 1`, `True` <-> `False`, short strings emptied
  invert_condition  `if c:` -> `if not c:` (also while, conditional expressions, comprehension ifs)
  wrong_operator    `+` <-> `-`, `*` -> `+`, `//` -> `/`, `and` <-> `or`, `+=` -> `-=`, ...

A mutant becomes a task only after execution in the sandbox: at least one test that passes on the
original must fail on the mutant, and reverting the mutant (the gold patch) must make every such
test pass again. The task's snapshot is the buggy state; `patch` is the diff buggy -> original;
the tests are hidden in `test_patch`. Choice of mutants is deterministic given a seed: sites are
enumerated in source order and sampled with `random.Random(f"{seed}:{subject}")`, balanced across
operators. Validated mutants of one subject can be combined (disjoint lines) into harder tasks.

The package, in reading order: ``operators.py`` (finding and applying mutations), ``subjects.py``
(HumanEval problems and Python projects as code + tests), ``tasks.py`` (mutant -> validated task).
"""

from minicoder.tasks.mutate.operators import (
    OPERATORS,
    Mutation,
    MutationError,
    apply_mutations,
    find_mutations,
    sample_mutations,
)
from minicoder.tasks.mutate.subjects import Subject, humaneval_subject, humaneval_tests, repo_subject
from minicoder.tasks.mutate.tasks import (
    Outcome,
    baseline,
    build_candidate,
    candidates,
    combinations,
    problem_statement,
)

__all__ = ["OPERATORS", "Mutation", "MutationError", "Subject", "Outcome", "find_mutations", "apply_mutations",
           "sample_mutations", "humaneval_tests", "humaneval_subject", "repo_subject",
           "candidates", "combinations", "baseline", "build_candidate", "problem_statement"]
