"""The families table of docs/compress.md, made from the registry so it cannot drift: one row per registered family
with its transformers class, the cuts it takes and the first line of its docstring (what `slim methods --docs`
shows). `python -m slim.harness.models.families.table` prints it; tests/test_family_table.py holds the page to it."""

from __future__ import annotations

from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from slim.harness.models.families import model_families
from slim.harness.plugins import load_plugins

HEADER = ("| `model.family` | transformers class | depth | width | experts | softmax router | what it is |\n"
          "|---|---|---|---|---|---|---|")


def family_table() -> str:
    """The markdown table of every registered family, in name order."""
    load_plugins()
    rows = []
    for name, family in sorted(model_families.items()):
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[name]].__name__
        width = "yes" if family.hidden_dims is not None else "no (refused in one line)"
        softmax = "yes" if family.softmax_router else "no (zero-expert adaptations refuse it)"
        summary = " ".join(family.doc.strip().split("\n\n")[0].split())  # the docstring's first paragraph
        rows.append(f"| `{name}` | `{model_class}` | yes | {width} | yes | {softmax} | {summary} |")
    return "\n".join([HEADER, *rows])


if __name__ == "__main__":
    print(family_table())
