"""The pure parts of benchmarks/mlserver_bench.py and benchmarks/timing.py, without MLServer: the runtime it writes,
the files MLServer reads, the figures and the table, and how it says that MLServer cannot be had."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    module = load("mlserver_bench")
    yield module
    del sys.modules["mlserver_bench"]


def test_the_runtime_is_an_mlmodel_that_opens_the_session_with_the_given_options(bench, tmp_path):
    tree = ast.parse(bench.RUNTIME)
    compile(bench.RUNTIME, "runtime.py", "exec")
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert cls.name == "OnnxRuntime" and [b.id for b in cls.bases] == ["MLModel"]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.AsyncFunctionDef)}
    assert set(methods) == {"load", "predict"}
    source = ast.unparse(methods["load"])
    for option in ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level", "providers"):
        assert option in source
    assert "NumpyCodec.decode_input" in ast.unparse(methods["predict"]) and "NumpyCodec.encode_output" in ast.unparse(methods["predict"])

    onnx_file = tmp_path / "m.onnx"
    settings = bench.server_settings(18080, 18081, 0)
    model = bench.model_settings("detector", onnx_file, 1, 1, ["CPUExecutionProvider"])
    bench.write_repository(tmp_path / "repo", settings, [model])
    assert json.loads((tmp_path / "repo" / "settings.json").read_text()) == settings
    assert settings["host"] == "127.0.0.1" and settings["metrics_endpoint"] is None and settings["parallel_workers"] == 0
    written = json.loads((tmp_path / "repo" / "detector" / "model-settings.json").read_text())
    assert written["implementation"] == "runtime.OnnxRuntime" and written["parameters"]["uri"] == str(onnx_file)
    assert written["parameters"]["extra"]["intra_op_num_threads"] == 1
    assert (tmp_path / "repo" / "runtime.py").read_text() == bench.RUNTIME


def test_the_in_process_side_is_the_baseline_and_the_others_are_set_against_it_and_edgefleet(bench):
    stats = {
        "in_process": {"p50_ms": 5.0, "p99_ms": 8.0, "throughput_per_s": 200.0},
        "edgefleet_binary": {"p50_ms": 5.4, "p99_ms": 9.0, "throughput_per_s": 180.0},
        "mlserver_json": {"p50_ms": 270.0, "p99_ms": 400.0, "throughput_per_s": 3.6},
        "client_json_encode": {"p50_ms": 200.0, "p99_ms": 210.0, "throughput_per_s": 5.0},
    }
    out = bench.compare(stats)
    assert out["in_process"] == stats["in_process"]
    assert out["edgefleet_binary"]["added_p50_ms"] == pytest.approx(0.4)
    assert out["edgefleet_binary"]["added_p99_ms"] == pytest.approx(1.0)
    assert out["edgefleet_binary"]["throughput_ratio"] == pytest.approx(0.9)
    assert "p50_x_edgefleet_binary" not in out["edgefleet_binary"]
    assert out["mlserver_json"]["p50_x_edgefleet_binary"] == pytest.approx(50.0)
    assert out["mlserver_json"]["edgefleet_binary_throughput_x"] == pytest.approx(50.0)
    assert out["mlserver_json"]["throughput_ratio"] == pytest.approx(0.018)
    assert "added_p50_ms" not in out["client_json_encode"]  # not a served side

    result = {
        "models": [
            {
                "model": "detector",
                "input_bytes": 602112,
                "requests": {"in_process": 400, "edgefleet_binary": 400, "mlserver_json": 16, "client_json_encode": 16},
                "sides": out,
                "mlserver_binary": {"ok": False, "status": 422, "error": "JSON decode error (str is not valid UTF-8)", "body": "{}"},
            }
        ]
    }
    text = "\n".join(bench.table(result))
    assert "detector (588 KiB in, 400 req/side)" in text
    assert "+0.400" in text and "0.900" in text
    assert "MLServer 1.7.1, JSON (16)" in text
    assert "refused: HTTP 422: JSON decode error" in text
    assert "MLServer JSON p50 = 50.0x edgefleet binary's" in text and "edgefleet binary throughput = 50.0x MLServer JSON's" in text
    assert "serialising it: p50 200.000 ms" in text

    g = bench.goals(result)
    assert g["added_p50_ms"] == {"detector": pytest.approx(0.4)} and g["throughput_ratio_large"] == pytest.approx(0.9) and g["met"]
    assert (
        bench.goals(
            {
                "models": [
                    {
                        "model": "detector",
                        "sides": bench.compare({**stats, "edgefleet_binary": {**stats["edgefleet_binary"], "p50_ms": 6.0}}),
                    }
                ]
            }
        )["met"]
        is False
    )
    assert "detector +0.400" in bench.goals_line(g) and bench.goals_line(g).endswith("0.900x -> met")


def test_a_refusal_is_read_from_triton_clients_message(bench):
    message = (
        "an exception occurred in the client while decoding the response: 'error'\n"
        'response: {"detail":[{"type":"json_invalid","msg":"JSON decode error","ctx":{"error":"str is not valid UTF-8"}}]}'
    )
    said = bench.refusal(message)
    assert said["error"] == "JSON decode error (str is not valid UTF-8)"
    assert said["body"].startswith('{"detail"')
    assert bench.refusal("connection reset\n by peer") == {"error": "connection reset by peer", "body": None}


def test_the_timing_helpers_interleave_and_count(bench):
    timing = sys.modules["timing"]
    calls: list[str] = []
    sides = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    lat, busy = timing.interleaved(sides, rounds=2, counts={"a": 2, "b": 1}, warmup={"a": 1})
    assert calls == ["a", "a", "a", "b", "b", "a", "a"]  # warm-up, then ABBA
    assert [len(lat["a"]), len(lat["b"])] == [4, 2] and all(v >= 0 for v in lat["a"] + lat["b"])
    s = timing.summarize([1.0, 2.0, 3.0, 4.0], busy_s=0.5)
    assert s == {"p50_ms": 2.5, "p99_ms": 4.0, "throughput_per_s": 8.0}
    assert timing.pct(list(range(100)), 0.99) == 99


def test_without_an_index_it_says_why_and_leaves_no_venv(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    venv = tmp_path / "venv"
    with pytest.raises(bench.Unavailable, match="pip could not install edgefleet-no-such-dist==1"):
        bench.ensure_venv(venv, ["edgefleet-no-such-dist==1"], log=tmp_path / "pip.log")
    assert not venv.exists() and "edgefleet-no-such-dist" in (tmp_path / "pip.log").read_text()


def test_unavailable_is_a_message_and_exit_3_or_a_skip(bench, monkeypatch, capsys):
    def unavailable(args):
        raise bench.Unavailable("no index reachable")

    monkeypatch.setattr(bench, "run", unavailable)
    assert bench.main([]) == 3
    assert "MLServer is not available here: no index reachable" in capsys.readouterr().err
    assert bench.main(["--skip-if-unavailable"]) == 0
    assert capsys.readouterr().out == "skipped: no index reachable\n"
