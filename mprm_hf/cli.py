"""`mprm-hf` subcommands. Each one lives in the module of its concept; this file only dispatches."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import NoReturn

from mprm_hf.errors import MPRMError

# name -> (module exposing `main(argv) -> int | None`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mprm_hf.data.synthetic", "write a synthetic VisualPRM400K corpus and VisualProcessBench"),
    "select": ("mprm_hf.selection.cli", "score rollouts (BIS and baselines) and write or push a subset"),
    "pretrain": ("mprm_hf.pretrain", "pretrain the tiny base VLM by dense VQA over fresh synthetic scenes"),
    "train": ("mprm_hf.train", "train a process reward model from a YAML recipe"),
    "grpo": ("mprm_hf.grpo", "GRPO on a vision-language policy with a trained PRM as its reward (TRL)"),
    "evaluate": ("mprm_hf.evaluation", "score a checkpoint on VisualProcessBench"),
    "score": ("mprm_hf.scoring", "print the reward of every step of one reasoning trace"),
    "rerank": ("mprm_hf.rerank", "pick the best of N candidate traces per question"),
    "bon": (
        "mprm_hf.bon",
        "best-of-N accuracy of PRMs on a candidate pool, against majority vote and random",
    ),
    "sweep": (
        "mprm_hf.sweep",
        "the data-efficiency sweep: fractions x selectors x seeds, trained and scored",
    ),
    "quickstart": (
        "mprm_hf.quickstart",
        "the end-to-end job on the embedded default: BIS-10% vs random-10% vs full",
    ),
    "push": ("mprm_hf.hub", "push a subset or a checkpoint folder to the Hub with its card"),
    "demo": ("mprm_hf.space", "start the Gradio Space app that shows the reward of every step of a trace"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return (
        f"usage: mprm-hf [--version] <command> [options]\n\ncommands:\n{rows}\n\n"
        "Run `mprm-hf <command> --help` for its options; select, train, grpo, evaluate and sweep also read them "
        "from a YAML recipe (`--config RECIPE.yaml`, see recipes/)."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from mprm_hf import __version__

        print(f"mprm-hf {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mprm-hf: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except (MPRMError, OSError) as error:  # OSError: a path that cannot be read or written
        print(f"mprm-hf {name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mprm-hf {name}: interrupted", file=sys.stderr)
        return 130


def launched(name: str) -> NoReturn:
    """`python -m mprm_hf.<module>` under `accelerate launch`: the subcommand `name` with the CLI's one-line
    errors, then an exit that skips the interpreter's teardown. Once a rank's work is done and written, the
    teardown of the C++ threads of its distributed stack (gloo, DeepSpeed's CPU ops) now and then aborts it
    ("terminate called without an active exception", SIGABRT: seen on 2 of about 40 two-process CPU
    launches), which the launcher reports as a failed run."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    code = main([name, *sys.argv[1:]])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
