"""Helpers for tests and benchmarks: free ports, tiny random Llama models, process cleanup.

``build_tiny_llama`` makes a real (random-weight) Llama with a BPE tokenizer trained locally on the
shipped legal sample text and a chat template, saved as an HF directory: every engine (transformers,
PEFT, TRL, DeepSpeed, vLLM) loads it like any hub model, with no download.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

# ChatML. With ``tools`` (function definitions) a first ``tools`` turn lists them, one JSON object per line, so every
# prefix of a conversation renders the same tools block (prefix-stable: the loss mask stays exact); an assistant's
# tool calls follow its text as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen/Hermes style);
# tool results are ``tool`` turns. Rows without tools render exactly as plain ChatML.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>tools\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '<tool_call>' + {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson"
    " + '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, none in ``avoid``: every socket stays bound until all are picked
    (separate :func:`free_port` calls can hand out the same port twice)."""
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


def _corpus() -> list[str]:
    from lexforge.samples import statute_corpus

    return statute_corpus()


def train_tokenizer(out_dir: Path, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(
    out_dir: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Build (once) a tiny random Llama + local tokenizer in ``out_dir``; returns the directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    (out / "lexforge_model.json").write_text(json.dumps({"name": "tiny-llama", "random": True, "seed": seed}))
    return out


def kill_pid_tree(pid: int, timeout: float = 10.0) -> None:
    """Terminate a process and its children (SIGTERM, then SIGKILL)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


STACK_PORT_VARS = ("LEXFORGE_PREFECT_PORT", "LEXFORGE_MLFLOW_PORT", "LEXFORGE_RAY_PORT", "LEXFORGE_RAY_DASHBOARD_PORT",
                   "LEXFORGE_RAY_CLIENT_PORT", "LEXFORGE_RAY_AGENT_PORT")


def isolated_stack_env(home: Path) -> dict[str, str]:
    """Env vars for an embedded stack of its own: a private LEXFORGE_HOME, free ports for every service, and
    that stack's Ray token file (created by `lexforge up`) for every client started with this env."""
    from lexforge import ray_auth

    return {"LEXFORGE_HOME": str(home), **{var: str(free_port()) for var in STACK_PORT_VARS},
            **ray_auth.client_env(home)}


def ray_train_worker_processes() -> list:
    """This process's Ray Train worker processes (psutil), e.g. to SIGKILL one in a preemption drill."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def train_in_thread(spec):
    """Start ``run_training(spec)`` in a daemon thread (so a test or benchmark can kill things meanwhile); returns
    (thread, box): after ``join`` the box holds ``result`` or ``error``."""
    import threading

    from lexforge.train import run_training

    box: dict = {}

    def target():
        try:
            box["result"] = run_training(spec)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name=f"train-{spec.name}")
    t.start()
    return t, box
