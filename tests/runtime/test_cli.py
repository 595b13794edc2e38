"""The `chimera` command end to end: generate, bench, presets, --help, and clear errors (exit code 2)."""

import json
import subprocess
import sys

import pytest

import chimera
from chimera.runtime.cli import main
from chimera.runtime.engine import Engine
from chimera.runtime.tokenizer import ByteTokenizer
import hf_parity


def test_generate_matches_engine(capsys):
    """The CLI's greedy text is the Engine's greedy tokens for the same seeded random weights."""
    assert main(["generate", "--config", "llama-tiny", "--prompt", "Hello", "--prompt", "chimera!",
                 "--max-new-tokens", "8", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    model = chimera.build(chimera.load_config("llama-tiny"))
    import jax
    params = model.init(jax.random.key(0))
    tokenizer = ByteTokenizer(model.config.vocab_size)
    outs = Engine(model, params, max_batch=2, max_len=64).generate(
        [tokenizer.encode("Hello"), tokenizer.encode("chimera!")], max_new_tokens=8)
    assert [r["prompt"] for r in rows] == ["Hello", "chimera!"]
    assert [r["tokens"] for r in rows] == [o.tokens for o in outs]
    assert all(r["finish_reason"] == "length" and len(r["tokens"]) == 8 for r in rows)


def test_generate_text_output_and_sampling(capsys):
    assert main(["generate", "--config", "llama-tiny", "--prompt", "abc", "--max-new-tokens", "5",
                 "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("abc") and "[5 tokens, finish_reason=length]" in out


def test_generate_from_hf_folder(tmp_path, capsys):
    """--hf uses the folder's weights and its tokenizer.json."""
    tokenizer = hf_parity.tiny_llama_folder(tmp_path, ["hello", "world"] + [f"w{i}" for i in range(29)])

    assert main(["generate", "--hf", str(tmp_path), "--prompt", "hello world", "--max-new-tokens", "4",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    model, params = chimera.from_hf(tmp_path)
    expected = Engine(model, params, max_batch=1, max_len=8).generate([[1, 2]], max_new_tokens=4)[0]
    assert row["tokens"] == expected.tokens
    assert row["text"] == tokenizer.decode(expected.tokens)


def test_bench_writes_report(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--config", "llama-tiny", "--batch", "1,2", "--prompt-len", "8", "--gen", "4",
                 "--repeats", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decode ms/step" in out and "peak bandwidth and FLOP/s unknown" in out
    report = json.loads(path.read_text())
    assert report["config"] == "llama-tiny" and [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["decode_ms_per_step"] > 0 and r["prefill_ms"] > 0 and r["mbu"] is None
        assert r["tokens_per_s"] == pytest.approx(r["batch"] / r["decode_ms_per_step"] * 1e3)


def test_presets_lists_bundled(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in chimera.list_presets())


@pytest.mark.parametrize("command", [[], ["generate"], ["bench"], ["presets"]])
def test_help(command):
    """--help on every command, through the installed module entry point."""
    result = subprocess.run([sys.executable, "-m", "chimera.runtime.cli", *command, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: chimera" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["generate", "--config", "no-such-preset", "--prompt", "x"], "unknown preset"),
    (["generate", "--config", "llama-tiny", "--prompt", "x", "--max-new-tokens", "40", "--max-len", "20"],
     "max_len"),
    (["generate", "--config", "llama-tiny", "--prompt", "x", "--top-p", "0"], "top_p"),
    (["generate", "--hf", "/no/such/folder", "--prompt", "x"], "not a folder"),
])
def test_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["bench", "--config", "llama-tiny", "--batch", "1,x"],
    ["bench", "--config", "llama-tiny", "--batch", "0"],
    ["generate", "--prompt", "x"],  # neither --config nor --hf
    ["generate", "--config", "llama-tiny", "--hf", "dir", "--prompt", "x"],
])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_bench_context_list(capsys):
    """--context runs each context (decode with that many tokens cached) at each batch size,
    here in one cache of --cache-len slots for both."""
    assert main(["bench", "--config", "llama-tiny", "--batch", "1", "--context", "20,40", "--gen", "3",
                 "--repeats", "1", "--cache-len", "256"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("20", "1"), ("40", "1")]


def test_bench_cache_smaller_than_request():
    from chimera.runtime import bench
    config = chimera.load_config("llama-tiny")
    with pytest.raises(ValueError, match="cache_len 40 is smaller than prompt 40 \\+ gen 3"):
        bench.bench_batch(config, None, batch=1, prompt_len=40, gen=3, repeats=1, cache_len=40)


@pytest.mark.parametrize("argv", [["presets"], ["bench", "--config", "llama-tiny", "--mesh", "tensor=2"]])
def test_process_options_set_before_the_command_runs(monkeypatch, argv):
    """The CLI appends chimera's GPU options to XLA_FLAGS first; `--xla-defaults` does not."""
    from chimera.runtime import cli, gpu_options
    calls = []
    monkeypatch.setattr(gpu_options, "set_xla_flags", lambda: calls.append("set"))
    monkeypatch.setattr(cli, "cmd_bench", lambda args: calls.append("run") or 0)
    monkeypatch.setattr(cli, "cmd_presets", lambda args: calls.append("run") or 0)
    assert main(argv) == 0
    assert calls == ["set", "run"]
    if argv[0] == "bench":
        calls.clear()
        assert main(argv + ["--xla-defaults"]) == 0
        assert calls == ["run"]
