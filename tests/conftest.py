"""Shared fixtures: a tiny seeded model (most tests) and the real embedded model (integration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_lora_adapter, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("tiny-adapters")
    return [
        build_lora_adapter(tiny_model_dir, root / f"adapter-{i}", seed=100 + i) for i in range(2)
    ]


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from diag.backend.hf import HFBackend

    return HFBackend.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def smollm_backend():
    """The real embedded SmolLM2-135M-Instruct (converted once, then cached)."""
    from diag.backend.hf import HFBackend

    return HFBackend.load(None, device="cpu")


@pytest.fixture(scope="session")
def general_file(tmp_path_factory) -> Path:
    """A small general-chat file in both supported shapes (OpenAI messages, alpaca fields)."""
    path = tmp_path_factory.mktemp("general") / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4."},
            ]
        },
        {"instruction": "Say hello", "output": "Hello!"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
