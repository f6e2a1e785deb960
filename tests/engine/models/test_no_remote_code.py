"""No model, config or tokenizer is ever loaded with a repository's own code: every from_pretrained
call in the product says trust_remote_code=False itself, rather than leaning on transformers'
default (which a future version or an environment variable could change)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_every_from_pretrained_call_refuses_remote_code():
    calls, missing = 0, []
    for package in ("engine", "training", "corpora", "gpus", "mistudio"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                    calls += 1
                    flags = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
                    if not (len(flags) == 1 and isinstance(flags[0], ast.Constant) and flags[0].value is False):
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls >= 9 and not missing, missing
