"""benchmarks/xla_flags.py tells an option XLA parses from one it aborts on."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "xla_flags.py"


def test_accepted_and_unknown_options():
    spec = importlib.util.spec_from_file_location("xla_flags", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.accepted("xla_gpu_enable_command_buffer")  # a string option
    assert script.accepted("xla_gpu_graph_min_graph_size")  # an integer one: "false" is a bad value, not unknown
    assert not script.accepted("xla_gpu_no_such_option")
