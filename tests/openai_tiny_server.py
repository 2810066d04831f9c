"""A minimal OpenAI-compatible chat server over a real local HF model (greedy decoding), used as the LLM judge
in tests: ``python tests/openai_tiny_server.py MODEL_DIR PORT [REQUIRED_KEY]``. Binds 127.0.0.1 only.

``$TINY_SERVER_FAIL_IF_CONTAINS``: answer HTTP 500 to every request whose messages contain that text (a judge
that breaks down on some items)."""

from __future__ import annotations

import os
import sys
import time

import torch
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, port = sys.argv[1], int(sys.argv[2])
required_key = sys.argv[3] if len(sys.argv) > 3 else None
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
app = FastAPI()
calls = {"n": 0}
fail_marker = os.environ.get("TINY_SERVER_FAIL_IF_CONTAINS")


@app.get("/health")
def health():
    return {"ok": True, "calls": calls["n"]}


@app.get("/v1/models")
def models():
    return {"object": "list", "data": [{"id": "tiny-judge", "object": "model", "owned_by": "test"}]}


@app.post("/v1/chat/completions")
def chat(body: dict, authorization: str | None = Header(None)):
    if required_key and authorization != f"Bearer {required_key}":
        raise HTTPException(401, "bad api key")
    calls["n"] += 1
    if fail_marker and any(fail_marker in str(m.get("content", "")) for m in body["messages"]):
        raise HTTPException(500, "judge model crashed on this item")
    text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=int(body.get("max_tokens") or 32), do_sample=False,
                             pad_token_id=tok.pad_token_id)
    reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"id": f"chatcmpl-{calls['n']}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "tiny-judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": int(enc["input_ids"].shape[1]), "completion_tokens": int(out.shape[1]
                      - enc["input_ids"].shape[1]), "total_tokens": int(out.shape[1])}}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
